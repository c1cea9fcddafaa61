"""Every model family: its config type, builder, named configs and their one-line descriptions,
registered by :mod:`.registry` on first use."""

from . import darknet, densenet, peleenet, refnets, resnet

FAMILIES = (
    ("resnet", resnet.ResNetCfg, resnet.build_resnet, resnet.CFGS, resnet.DOCS),
    ("darknet", darknet.DarknetCfg, darknet.build_darknet, darknet.CFGS, darknet.DOCS),
    ("darknet", darknet.DarknetRefCfg, darknet.build_darknet_ref, darknet.REF_CFGS, darknet.DOCS),
    ("densenet", densenet.DenseNetCfg, densenet.build_densenet, densenet.CFGS, densenet.DOCS),
    ("peleenet", peleenet.PeleeNetCfg, peleenet.build_peleenet, peleenet.CFGS, peleenet.DOCS),
    ("refnet", refnets.RefNetCfg, refnets.build_refnet, refnets.CFGS, refnets.DOCS),
)
