"""What the engine asks of a task, and image classification's answer.

A task turns a batch's ``targets`` into a loss during training and into metrics during
evaluation; everything else (loaders, optimizer, schedule, EMA, AMP, DDP, checkpoints, logs) is the
engine's. Detection plugs in the same way with its own loss and mAP.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError
from .distributed import DistInfo, all_reduce_sum


class Task(Protocol):
    name: str
    main_metric: str  # higher is better; picks best.safetensors
    plot_panels: dict[str, list[str]]  # results.png: panel title -> CSV columns

    def targets_to(self, targets: Any, device: torch.device) -> Any: ...

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: Any) -> torch.Tensor: ...

    def eval_start(self, device: torch.device) -> Any: ...

    def eval_update(self, state: Any, outputs: Any, targets: Any) -> None: ...

    def eval_finish(self, state: Any, dist: DistInfo) -> dict[str, float]: ...

    def summary(self, metrics: dict) -> str: ...

    def epoch_log(self) -> dict[str, float]:
        """The task's own columns of an epoch's results row (read, then reset, after its last step)."""
        ...


class ClassificationTask:
    """Cross-entropy (with label smoothing) for training; loss, top-1 and top-5 (%) for evaluation.

    The validation loss is plain cross-entropy, so it is comparable between smoothing settings.
    """

    name = "classify"
    main_metric = "top1"
    plot_panels = {
        "loss": ["train_loss", "val_loss"],
        "accuracy (%)": ["val_top1", "val_top5"],
        "learning rate": ["lr"],
    }

    def __init__(self, num_classes: int, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise OptionError("{label_smoothing} must lie in [0, 1)", label_smoothing=label_smoothing)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    def targets_to(self, targets: torch.Tensor, device: torch.device) -> torch.Tensor:
        return targets.to(device, non_blocking=True)

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = model(inputs)
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def eval_start(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-5, count

    def eval_update(self, state: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        logits = outputs.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        state[0] += F.cross_entropy(logits, targets, reduction="sum").double()
        state[1] += hits[:, 0].sum()
        state[2] += hits.any(dim=1).sum()
        state[3] += targets.numel()

    def eval_finish(self, state: torch.Tensor, dist: DistInfo) -> dict[str, float]:
        loss, c1, c5, n = all_reduce_sum(state, dist).tolist()
        if n == 0:
            raise ValueError("the validation split has no readable images")
        return {"loss": loss / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "images": int(n)}

    def epoch_log(self) -> dict[str, float]:
        return {}

    def summary(self, metrics: dict) -> str:
        return f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%"
