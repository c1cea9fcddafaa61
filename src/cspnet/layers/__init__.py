"""Building blocks shared by every model family."""

from .activations import ACTIVATIONS, check_act, make_act
from .conv import BnActConv, ConvBnAct
from .dense import DenseBlock, DenseLayer
from .pooling import AvgPool2x2, ClassifierHead, DarknetMaxPool
from .shortcut import partial_add
from .stem import ConvPoolStem

__all__ = [
    "ACTIVATIONS",
    "AvgPool2x2",
    "BnActConv",
    "ClassifierHead",
    "ConvBnAct",
    "ConvPoolStem",
    "DenseBlock",
    "DenseLayer",
    "DarknetMaxPool",
    "check_act",
    "make_act",
    "partial_add",
]
