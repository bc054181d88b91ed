"""Record what chosen modules output during one forward pass (forward hooks, removed after).

The one hook-capture mechanism: RegNet's `forward_intermediates` (I / H / O per block) and
the feature maps and probes of `selfreg features` / `selfreg probe` both use it.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

from torch import nn

T = TypeVar("T")


def record_outputs(taps: list[Mapping[str, nn.Module]], run: Callable[[], T],
                   convert: Callable[[Any], Any] = lambda out: out) -> tuple[list[dict[str, Any]], T]:
    """Call `run()` once; return, for every mapping in `taps`, {key: convert(output of that module)}
    (keys whose converted output is None are left out), and what `run()` returned."""
    records: list[dict[str, Any]] = [{} for _ in taps]
    handles = []
    for record, named in zip(records, taps):
        for key, module in named.items():
            def hook(mod, args, out, record=record, key=key):
                value = convert(out)
                if value is not None:
                    record[key] = value
            handles.append(module.register_forward_hook(hook))
    try:
        result = run()
    finally:
        for handle in handles:
            handle.remove()
    return records, result
