"""Building blocks shared by every model family."""

from .activations import ACTIVATIONS, check_act, make_act
from .conv import BnActConv, ConvBnAct
from .dense import DenseBlock, DenseLayer
from .fold import calibrate_batchnorms, count_batchnorms, fold_batchnorms
from .pelee import StemBlock, TwoWayDenseLayer, two_way_dense_block
from .pooling import AvgPool2x2, ClassifierHead, DarknetMaxPool
from .shortcut import partial_add
from .stem import ConvPoolStem, PoolConv

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
    "PoolConv",
    "StemBlock",
    "TwoWayDenseLayer",
    "calibrate_batchnorms",
    "check_act",
    "count_batchnorms",
    "fold_batchnorms",
    "make_act",
    "partial_add",
    "two_way_dense_block",
]
