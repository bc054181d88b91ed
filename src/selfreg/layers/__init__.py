"""Building blocks shared by model families: one concept per file."""
from .se import SqueezeExcite
from .shortcut import make_shortcut, PadShortcut

__all__ = ["SqueezeExcite", "make_shortcut", "PadShortcut"]
