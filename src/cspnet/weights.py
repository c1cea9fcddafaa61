"""``cspnet.weights``: the name the timm import had before :mod:`cspnet.convert`; kept so that
``cspnet.weights.from_timm(state_dict, timm_name)`` keeps working."""

from .convert.timm import TIMM_MODELS, check_timm_name, from_timm

__all__ = ["TIMM_MODELS", "check_timm_name", "from_timm"]
