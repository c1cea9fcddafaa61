"""Seeds, mixed precision (and a guard for a bf16 CPU kernel bug) and RNG snapshots.

Randomness is re-seeded from ``(seed, epoch, rank)`` at the start of every epoch (model dropout,
main-process augmentation, the sampler's shuffle and the loader workers' seeds), so epoch ``k``
draws the same numbers whether the run got there in one go or was resumed.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch import nn

from ..errors import OptionError

AMP_CHOICES = ("none", "auto", "bf16", "fp16")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101) % 2**63


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels where torch has them (CUDA: no cuDNN autotuning)."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not enabled
        torch.backends.cudnn.deterministic = enabled


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CPU, fp16 on CUDA (bf16 when asked for and supported); ``none``: fp32."""
    if amp in (None, "none"):
        return None
    if amp not in AMP_CHOICES:
        raise OptionError(f"{{amp}} is not allowed; choose one of {', '.join(AMP_CHOICES)}", amp=amp)
    if device.type == "cpu":
        if amp == "fp16":
            raise OptionError("{amp} needs a CUDA device; on the CPU use bf16", amp="fp16")
        return torch.bfloat16
    if amp == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise OptionError(f"{{amp}}: {torch.cuda.get_device_name(device)} has no bf16; use fp16", amp="bf16")
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Fp32NarrowConvs:
    """Forward hooks that run a conv in fp32 under CPU bf16 autocast when its stride exceeds its
    input's height or width (e.g. a 3x3 stride-2 conv on a 1x1 map, which ``resnet_tiny`` at 16 px
    has in its last stage).

    Why: for those shapes the oneDNN bf16 weight-gradient kernel of torch 2.14 on the CPU returns
    garbage (1e17 to inf, varying from call to call; the forward and the input gradient are right),
    which overflows the gradient norm and turns a clipped step into NaN. Such convs see a pixel or
    two, so fp32 costs nothing. Evaluation (no gradients), CUDA and fp16 are left alone.
    """

    def __init__(self, model: nn.Module):
        self.active = False
        self.handles = []
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                self.handles += [m.register_forward_pre_hook(self.before), m.register_forward_hook(self.after)]

    @staticmethod
    def affected(conv: nn.Conv2d, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and any(s > n for s, n in zip(conv.stride, x.shape[-2:], strict=True)))

    def before(self, conv: nn.Conv2d, args: tuple):
        if not self.affected(conv, args[0]):
            return None
        torch.set_autocast_enabled("cpu", False)  # the enclosing torch.autocast restores it on exit too
        self.active = True
        return (args[0].float(), *args[1:])

    def after(self, conv: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        if self.active:
            torch.set_autocast_enabled("cpu", True)
            self.active = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """fp16 needs loss scaling; bf16 has fp32's range and does not."""
    if dtype is torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def rng_state() -> dict:
    """Every generator's state, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
