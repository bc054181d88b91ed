"""Register things by name, reject duplicates, suggest close matches for typos.

One `Registry` class serves models, datasets, optimizers and schedulers alike
(timm `_registry.py`, torchvision `models/_api.py`). Bookkeeping only: building a
model from its entry is `selfreg.factory`'s job.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import UserError


@dataclass
class Entry:
    name: str
    fn: Callable[..., Any]
    meta: dict[str, Any] = field(default_factory=dict)


class Registry:
    def __init__(self, kind: str, aliases: dict[str, tuple[str, str]] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        # What others call a family -> (the prefix it is registered under, whose family it is);
        # see MODEL_ALIASES. Only hints: an alias never resolves to a model by itself.
        self.aliases = dict(aliases or {})

    def register(self, name: str | None = None, **meta: Any) -> Callable:
        """Decorator: `@REG.register("name", paper=...)`; the function name by default."""

        def deco(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = Entry(key, fn, dict(meta))
            return fn

        return deco

    def add(self, name: str, fn: Callable, **meta: Any) -> None:
        self.register(name, **meta)(fn)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=5, cutoff=0.5)
            hint = self.alias_hint(name) or (f"did you mean: {', '.join(close)}?" if close else (
                "see `selfreg models` for the list" if self.kind == "model"
                else f"valid: {', '.join(sorted(self._entries))}"))
            raise UserError(f"unknown {self.kind} {name!r}; {hint}") from None

    def alias_hint(self, text: str) -> str:
        """For a name or pattern spelt as another paper or library spells it ('regnet20', 'RegNet*'),
        the registered names it stands for, as a hint; '' when no alias applies."""
        lowered = text.lower().replace("-", "").replace(" ", "")       # "RegNet-20" -> "regnet20"
        for theirs, (ours, whose) in self.aliases.items():
            if theirs not in lowered:
                continue
            wanted = lowered.replace(theirs, ours)
            family = self.names(f"*{ours}*")
            names = (self.names(wanted) or self.names(wanted + "*")
                     or difflib.get_close_matches(wanted, family, n=6, cutoff=0.6) or family)
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            listing = wanted if any(c in wanted for c in "*?[") else f"{ours}*"
            return f"{whose} is named {ours}* here: did you mean {shown}? (`selfreg models '{listing}'` lists them)"
        return ""

    def get(self, name: str) -> Callable:
        return self.entry(name).fn

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


# Names users type after reading a paper (or another library) -> (our prefix, whose family it is).
# timm's regnet* are Radosavovic et al.'s RegNet, an unrelated family; ours is Xu et al.'s.
MODEL_ALIASES = {
    "regnet": ("rrnet", "the RegNet of Xu et al. (RNN-regulated ResNets)"),
}

MODELS = Registry("model", aliases=MODEL_ALIASES)

# Arguments every model may take, declared per model at registration (`accepts=`):
# img_size  the input size it is built for (token grids, small-input stems); models that
#           take any size as built do not declare it, and the factory does not pass it;
# norm_layer "batch", "group" or a layer type, for the families built from norm_layer.
SHARED_ARGS = ("img_size", "norm_layer")


def register_model(name: str | None = None, **meta: Any) -> Callable:
    """Register a model builder `fn(num_classes=..., in_chans=..., **kwargs) -> nn.Module`.

    `meta` records facts a table shows (`input_size`: native H=W, `paper`, `source`, `family`)
    and `accepts`: the shared arguments the builder takes besides num_classes and in_chans,
    out of `SHARED_ARGS` (see `selfreg.factory`, which passes on only what a model declares).
    """
    unknown = set(meta.get("accepts", ())) - set(SHARED_ARGS)
    if unknown:
        raise ValueError(f"model {name!r} declares unknown shared arguments {sorted(unknown)}; "
                         f"known: {', '.join(SHARED_ARGS)}")
    return MODELS.register(name, **meta)
