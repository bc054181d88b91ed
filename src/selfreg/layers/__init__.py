"""Building blocks shared by model families: one concept per file."""
from .basic_block import BasicBlock
from .convrnn import ConvCell, ConvGRU, ConvLSTM, ConvRNN, GateConv
from .se import SqueezeExcite
from .shortcut import make_shortcut, PadShortcut

__all__ = ["BasicBlock", "ConvCell", "ConvGRU", "ConvLSTM", "ConvRNN", "GateConv", "SqueezeExcite",
           "make_shortcut", "PadShortcut"]
