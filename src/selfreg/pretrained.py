"""Weights that ship inside the package, by model and tag.

    model = selfreg.create_model("rrnet20_gru", pretrained="cifar10-budget")   # the factory asks here
    weights = resolve("rrnet20_gru", "cifar10-budget")        # Weights: file, sha256, val accuracy, ...
    path = verified_path(weights)                             # sha256 checked, or a one-line UserError
    weights.classes                                           # ["airplane", ...]: the label names, in output order
    weights.eval_transform                                    # EvalTransform: size, mean, std, resize policy
    weights.pretrained_cfg()                                  # timm's pretrained_cfg (== model.pretrained_cfg)

The files are `.safetensors` exactly as `selfreg export --format safetensors` writes them
(model name, builder arguments, classes and eval transform in the header), so a shipped
weight loads through the same path as any weights file. They lie in one folder, by
default the package's `selfreg/weights/`, beside one `manifest.json`:

    {"format": "selfreg-pretrained/1",
     "weights": [
       {"model": "rrnet20_gru", "tag": "cifar10-budget-s1", "aliases": ["cifar10-budget"], "default": true,
        "file": "rrnet20_gru-cifar10-budget-s1.safetensors", "sha256": "<64 hex digits>",
        "val_accuracy": 0.9312, "split": "val",
        "command": "selfreg train configs/... --seeds 1", "commit": "<git commit of the run>"}]}

Why this shape:
- One entry per file. A model may ship several files (one per seed: `-s0`, `-s1`, ...),
  each under its own tag; `aliases` give an entry more names, so `cifar10-budget` names the
  chosen seed's file without copying it, and the choice is one line to change.
- `"default": true` (at most one entry per model) is what `pretrained=True` loads (timm and
  torch.hub pass booleans); a model without a default needs its tag spelt out.
- A tag or alias is unique per model; `model:tag` names one file everywhere (errors, the
  `selfreg models --pretrained` table, `benchmarks/reeval_pretrained.py`).
- `val_accuracy` is top-1 as a fraction, measured by `selfreg eval --split SPLIT` ("val"
  unless `split` says otherwise) on the file itself, so `benchmarks/reeval_pretrained.py`
  can measure it again and must get the same number; `command` and `commit` say how the
  file was made (the file's own header carries the run's full provenance too).
- The sha256 is checked every time a file is loaded (the files are a few MB): a damaged
  install is a one-line error naming the file, never a model with wrong weights.

What a file holds besides its tensors is read from its header without loading them (`header`,
`classes`, `eval_transform`); `make_pretrained_cfg` says it in timm's terms, the `pretrained_cfg`
dict every model that `selfreg.create_model` builds carries (as timm's models do), so that
`timm.data.resolve_data_config({}, model=model)` + `create_transform(**cfg)` feed the model
what `selfreg eval` feeds it.

The folder is `$SELFREG_PRETRAINED_DIR` when set, else the package's own: tests (and anyone
trying a release) point it at a temporary folder instead of writing into the package.
`make_entry(path, ...)` writes a manifest entry for a file (its model name, commit and sha256
read from the file). This module imports neither torch nor selfreg's models (only
`Weights.eval_transform` and `Weights.pretrained_cfg` import the eval transform's module), so
`selfreg models --pretrained` answers at once.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .errors import UserError

if TYPE_CHECKING:
    from .data.eval_transform import EvalTransform

FORMAT = "selfreg-pretrained/1"
MANIFEST = "manifest.json"
ENV_DIR = "SELFREG_PRETRAINED_DIR"
PACKAGE_DIR = Path(__file__).resolve().parent / "weights"
REINSTALL = "reinstall selfreg (pip install --force-reinstall selfreg) or fetch the file again"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")     # no ':' (it separates model and tag)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_LISTED = 30                                            # model:tag names shown in one error line
# The safetensors header key holding selfreg's JSON (weightfiles.WEIGHTS_KEY; that module imports torch).
HEADER_KEY = "selfreg"
_MAX_HEADER = 100 << 20                                 # bytes: a larger safetensors header is damage
# timm knows selfreg's models as selfreg_<name> (selfreg.entrypoints says why).
TIMM_PREFIX = "selfreg_"


@dataclass(frozen=True)
class Weights:
    """One shipped file and what the manifest says about it."""
    model: str
    tag: str
    file: str
    sha256: str
    val_accuracy: float
    command: str
    commit: str
    aliases: tuple[str, ...] = ()
    default: bool = False
    split: str = "val"
    # The memory layout val_accuracy was measured in: the run's own (its speed.json), because
    # NHWC and NCHW convolutions round differently and can flip a near-tie image.
    channels_last: bool = False
    root: Path = field(default=PACKAGE_DIR, compare=False)

    @property
    def path(self) -> Path:
        return self.root / self.file

    @property
    def names(self) -> tuple[str, ...]:
        """The tags this file answers to: its own, then its aliases."""
        return (self.tag, *self.aliases)

    @property
    def label(self) -> str:
        return f"{self.model}:{self.tag}"

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "root"}
        d["aliases"] = list(self.aliases)
        return d

    def header(self) -> dict[str, Any]:
        """The selfreg metadata in the file's header (model name, classes, eval transform, data
        config, provenance), read without the tensors; the sha256 is checked when the weights load."""
        return read_header(self.path, self.label)

    @property
    def classes(self) -> list[str]:
        """The label names, in the order of the model's outputs."""
        return [str(c) for c in self.header()["classes"]]

    @property
    def eval_transform(self) -> EvalTransform:
        """The eval transform the weights were measured with (`selfreg.data.eval_transform`):
        input size and channels, mean, std, and how other sizes are resized."""
        from .data.eval_transform import EvalTransform

        return EvalTransform.from_dict(self.header()["transform"])

    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's pretrained_cfg of these weights: what `create_model(model, pretrained=tag)` carries."""
        from .data.eval_transform import EvalTransform

        header = self.header()
        classes = [str(c) for c in header["classes"]]
        return make_pretrained_cfg(EvalTransform.from_dict(header["transform"]), self.model, len(classes),
                                   label_names=classes, tag=self.tag, file=str(self.path))


REQUIRED = ("model", "tag", "file", "sha256", "val_accuracy", "command", "commit")
KNOWN = tuple(f.name for f in fields(Weights) if f.name != "root")


# ---------------------------------------------------------------------------------------
# The manifest

def weights_dir() -> Path:
    """Where the weights and their manifest lie: `$SELFREG_PRETRAINED_DIR`, else the package's."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else PACKAGE_DIR


def load_manifest(root: str | Path | None = None) -> list[Weights]:
    """Every entry of the manifest in `root` (default `weights_dir()`), checked for shape.

    A missing manifest in another folder than the package's is an error (a mistyped
    `$SELFREG_PRETRAINED_DIR` must not read as "nothing ships"); a malformed one is a
    one-line error naming the file and the entry.
    """
    root = Path(root) if root is not None else weights_dir()
    path = root / MANIFEST
    if not path.is_file():
        if root == PACKAGE_DIR:
            raise UserError(f"{path} is missing from the installed package; {REINSTALL}")
        raise UserError(f"no {MANIFEST} in {root}, where ${ENV_DIR} (or the folder passed) points; "
                        f"unset ${ENV_DIR} to use the package's weights, or point it at a folder with a {MANIFEST}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is not readable JSON ({str(exc).splitlines()[0][:120]})") from None
    return parse_manifest(raw, root, str(path))


def parse_manifest(raw: Any, root: Path, source: str) -> list[Weights]:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(raw.get("weights"), list):
        raise UserError(f'{source}: expected {{"format": "{FORMAT}", "weights": [...]}}')
    unknown = sorted(set(raw) - {"format", "weights", "about"})
    if unknown:
        raise UserError(f"{source}: unknown top-level key(s) {', '.join(unknown)}; known: format, weights, about")
    entries = [_entry(item, i, root, source) for i, item in enumerate(raw["weights"])]
    _check_unique(entries, source)
    return entries


def _entry(item: Any, index: int, root: Path, source: str) -> Weights:
    where = f"{source}: weights[{index}]"
    if not isinstance(item, dict):
        raise UserError(f"{where} is not an object")
    missing = [k for k in REQUIRED if k not in item]
    unknown = sorted(set(item) - set(KNOWN))
    if missing or unknown:
        problem = f"lacks {', '.join(missing)}" if missing else f"has unknown key(s) {', '.join(unknown)}"
        raise UserError(f"{where} {problem}; keys: {', '.join(KNOWN)}")
    for key in ("model", "tag", "file", "sha256", "command", "commit", "split"):
        if key in item and not (isinstance(item[key], str) and item[key]):
            raise UserError(f"{where}: {key} must be a non-empty string")
    aliases = item.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise UserError(f"{where}: aliases must be a list of strings")
    bad = [t for t in [item["tag"], *aliases] if not _TAG.match(t)]
    if bad:
        raise UserError(f"{where}: tag {bad[0]!r} must be letters, digits, '_', '.', '-' (no ':')")
    if Path(item["file"]).name != item["file"] or not item["file"].endswith(".safetensors"):
        raise UserError(f"{where}: file {item['file']!r} must be a plain *.safetensors name in the manifest's folder")
    if not _SHA256.match(item["sha256"]):
        raise UserError(f"{where}: sha256 must be 64 lowercase hex digits")
    accuracy = item["val_accuracy"]
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0 <= accuracy <= 1:
        raise UserError(f"{where}: val_accuracy must be a fraction in [0, 1] (top-1), got {accuracy!r}")
    for key in ("default", "channels_last"):
        if not isinstance(item.get(key, False), bool):
            raise UserError(f"{where}: {key} must be true or false")
    return Weights(**{**item, "aliases": tuple(aliases), "val_accuracy": float(accuracy)}, root=root)


def _check_unique(entries: list[Weights], source: str) -> None:
    """A model:tag (aliases included) names one file; a model has at most one default."""
    seen: dict[str, str] = {}
    defaults: dict[str, str] = {}
    for w in entries:
        for name in w.names:
            key = f"{w.model}:{name}"
            if key in seen:
                raise UserError(f"{source}: {key} names two entries ({seen[key]} and {w.label})")
            seen[key] = w.label
        if w.default:
            if w.model in defaults:
                raise UserError(f"{source}: {w.model} has two defaults ({defaults[w.model]} and {w.label})")
            defaults[w.model] = w.label


# ---------------------------------------------------------------------------------------
# Choosing and checking a file

def available(pattern: str = "*", root: str | Path | None = None) -> list[Weights]:
    """Manifest entries whose model matches a shell-style pattern, in manifest order."""
    return [w for w in load_manifest(root) if fnmatch.fnmatch(w.model, pattern)]


def labels(entries: Iterable[Weights]) -> list[str]:
    """Every model:tag the entries answer to (aliases included), for messages."""
    return [f"{w.model}:{name}" for w in entries for name in w.names]


def resolve(model: str, tag: str | bool, root: str | Path | None = None) -> Weights:
    """The entry `model:tag` (True: the model's default); else a one-line error naming what ships."""
    entries = load_manifest(root)
    if not entries:
        raise UserError(f"no pretrained weights ship with selfreg yet, so there are none for {model!r}; "
                        "build it untrained (leave pretrained out) or load a file with checkpoint=PATH")
    mine = [w for w in entries if w.model == model]
    if tag is True:
        found = [w for w in mine if w.default]
        if not found and mine:
            raise UserError(f"{model!r} has no default weights; name one: {_join(labels(mine))}")
        wanted = "default weights"
    else:
        found = [w for w in mine if tag in w.names]
        wanted = f"pretrained weights {tag!r}"
    if not found:
        raise UserError(f"no {wanted} for {model!r}; available: {_join(labels(mine or entries))} "
                        "(`selfreg models --pretrained`)")
    return found[0]


def _join(names: list[str]) -> str:
    more = len(names) - _LISTED
    return ", ".join(names[:_LISTED]) + (f", ... ({more} more)" if more > 0 else "")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_path(weights: Weights) -> Path:
    """The file's path once its sha256 matches the manifest; a missing or damaged file is one line."""
    path = weights.path
    if not path.is_file():
        raise UserError(f"{path} ({weights.label}) is missing; {REINSTALL}")
    if sha256_of(path) != weights.sha256:
        raise UserError(f"{path} ({weights.label}) fails its sha256 check (damaged or changed since release); "
                        f"{REINSTALL}")
    return path


def read_header(path: str | Path, label: str = "") -> dict[str, Any]:
    """The selfreg JSON of a `.safetensors` file's header, read without its tensors (and without
    torch): an 8-byte length, then the JSON header whose `__metadata__` holds ours."""
    path = Path(path)
    where = f"{path} ({label})" if label else str(path)
    if not path.is_file():
        raise UserError(f"{where} is missing; {REINSTALL}")
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= _MAX_HEADER:
                raise ValueError(f"header length {size}")
            meta = json.loads(json.loads(f.read(size))["__metadata__"][HEADER_KEY])
        if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list) or \
                not isinstance(meta.get("transform"), dict):
            raise ValueError("no classes or transform")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{where} has no readable selfreg header ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:80] if str(exc) else ''}); {REINSTALL}") from None
    return meta


# ---------------------------------------------------------------------------------------
# timm's view: pretrained_cfg

def make_pretrained_cfg(transform: EvalTransform, model: str, num_classes: int,
                        label_names: Iterable[str] | None = None, tag: str | None = None,
                        file: str | None = None) -> dict[str, Any]:
    """timm's `pretrained_cfg` dict (the fields of `timm.models.PretrainedCfg`) for a selfreg model.

    The data fields come from the eval transform (`EvalTransform.timm_data_cfg`), so timm's
    `resolve_data_config({}, model=m)` + `create_transform(**cfg)` give the model what `selfreg
    eval` gives it; `label_names` are the class names in output order (absent when unknown,
    e.g. an untrained or re-headed model); `tag` and `file` name the weights it was built from.
    `pool_size`, `first_conv` and `classifier` are None, as timm keeps them (selfreg does not
    adapt stems or heads through them).
    """
    cfg: dict[str, Any] = {"architecture": TIMM_PREFIX + model, "tag": tag, "file": file, "custom_load": False,
                           **transform.timm_data_cfg(), "num_classes": int(num_classes),
                           "label_names": tuple(label_names) if label_names is not None else None}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    return {**cfg, "pool_size": None, "first_conv": None, "classifier": None}


# ---------------------------------------------------------------------------------------
# Listing and writing

def table(entries: list[Weights]) -> list[str]:
    """`selfreg models --pretrained`: model, tag (aliases; * = default), val accuracy, sha256, file."""
    rows = [(w.model, w.tag + ("*" if w.default else "") + (f" ({', '.join(w.aliases)})" if w.aliases else ""),
             f"{100 * w.val_accuracy:.2f}% {w.split}", w.sha256[:12], w.file) for w in entries]
    head = ("model", "tag (aliases)", "val top-1", "sha256", "file")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in [head, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"\n{len(entries)} weight file(s); * = the model's default (pretrained=True). "
                 'Load one: selfreg.create_model("MODEL", pretrained="TAG")')
    return lines


def make_entry(path: str | Path, tag: str, val_accuracy: float, command: str, *, aliases: Iterable[str] = (),
               default: bool = False, split: str = "val", commit: str | None = None,
               channels_last: bool = False) -> dict[str, Any]:
    """A manifest entry for a weights file: model name and commit read from its header, sha256 computed.

    `commit` defaults to the one in the file's provenance (the run's). Check the result with
    `parse_manifest` before shipping it; `load_manifest` does on every use.
    """
    from .weightfiles import read_model_file

    path = Path(path)
    loaded = read_model_file(path)
    if commit is None:
        run = loaded.provenance
        commit = str(run.get("commit") or "unknown") + ("-dirty" if run.get("dirty") else "")
    return {"model": loaded.name, "tag": tag, "aliases": list(aliases), "default": default, "file": path.name,
            "sha256": sha256_of(path), "val_accuracy": val_accuracy, "split": split, "command": command,
            "commit": commit, "channels_last": channels_last}


def write_manifest(entries: list[dict[str, Any]], root: str | Path) -> Path:
    """Write `root/manifest.json` (checked first: a malformed manifest is never written)."""
    root = Path(root)
    raw = {"format": FORMAT, "weights": list(entries)}
    parse_manifest(raw, root, str(root / MANIFEST))
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST
    path.write_text(json.dumps(raw, indent=2) + "\n")
    return path
