"""Registers every model family (imported lazily by the registry)."""

from . import darknet, densenet, peleenet, refnets, resnet
from .registry import register_family

register_family("resnet", resnet.ResNetCfg, resnet.build_resnet, resnet.CFGS, resnet.DOCS)
register_family("darknet", darknet.DarknetCfg, darknet.build_darknet, darknet.CFGS, darknet.DOCS)
register_family("darknet", darknet.DarknetRefCfg, darknet.build_darknet_ref, darknet.REF_CFGS, darknet.DOCS)
register_family("densenet", densenet.DenseNetCfg, densenet.build_densenet, densenet.CFGS, densenet.DOCS)
register_family("peleenet", peleenet.PeleeNetCfg, peleenet.build_peleenet, peleenet.CFGS, peleenet.DOCS)
register_family("refnet", refnets.RefNetCfg, refnets.build_refnet, refnets.CFGS, refnets.DOCS)
