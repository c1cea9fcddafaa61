"""Registers every model family (imported lazily by the registry)."""

from . import resnet
from .registry import register_family

register_family("resnet", resnet.ResNetCfg, resnet.build_resnet, resnet.CFGS)
