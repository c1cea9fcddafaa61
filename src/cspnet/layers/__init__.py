"""Building blocks shared by every model family."""

from .activations import ACTIVATIONS, check_act, make_act
from .conv import BnActConv, ConvBnAct
from .dense import DenseBlock, DenseLayer
from .pooling import ClassifierHead, DarknetMaxPool
from .shortcut import partial_add

__all__ = [
    "ACTIVATIONS",
    "BnActConv",
    "ClassifierHead",
    "ConvBnAct",
    "DenseBlock",
    "DenseLayer",
    "DarknetMaxPool",
    "check_act",
    "make_act",
    "partial_add",
]
