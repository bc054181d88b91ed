"""torch.hub entry points: one per selfreg model, with selfreg's shipped weights by tag.

    model = torch.hub.load("path/to/selfreg", "rrnet20_gru", source="local")                # untrained
    model = torch.hub.load("path/to/selfreg", "rrnet20_gru", source="local", pretrained="cifar10-budget")
    model = torch.hub.load("OWNER/selfreg", "resnet20", pretrained=True)     # from GitHub: same entry points
    model = torch.hub.load("path/to/selfreg", "resnet20", source="local", pretrained=True, num_classes=100)  # new head

Each entry point is `selfreg.create_model(name, pretrained=..., **kwargs)`: pretrained is
False (untrained), True (the model's default shipped weights) or a tag; other keyword
arguments (num_classes, in_chans, img_size, builder arguments) go to `create_model`: with
weights, another num_classes keeps the backbone and re-initialises the head. Every model
carries timm's `pretrained_cfg` (input size, mean, std, label names: docs/using.md). The
entry points are generated from selfreg's model registry (selfreg/entrypoints.py), so every
registered model is here.

torch.hub puts only this folder on sys.path while it imports this file, and selfreg lives
in src/: this checkout's src/ goes first on sys.path (and stays, for selfreg's lazy imports),
so the hub builds this repository's models, not another installed selfreg's. A selfreg
already imported in the process is used as it is.
"""
import os as _os
import sys as _sys

# Modules torch.hub checks before importing this file (import names, not package names).
dependencies = ["torch", "torchvision", "timm", "safetensors", "yaml", "numpy"]


def _entrypoints():
    src = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src")
    if "selfreg" not in _sys.modules and _os.path.isdir(_os.path.join(src, "selfreg")) and src not in _sys.path:
        _sys.path.insert(0, src)
    from selfreg.entrypoints import hub_entrypoints

    return hub_entrypoints()


globals().update(_entrypoints())
