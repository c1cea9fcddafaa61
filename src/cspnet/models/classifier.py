"""The classifier every family builds: stem -> stages -> head, with timm's model API."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import ClassifierHead, fold_batchnorms
from .config import to_dict


def checkpoint_meta(model: nn.Module) -> dict:
    """What a checkpoint records so that ``create_model(checkpoint=...)`` rebuilds ``model``:
    its registered name, config, class count and input channels (those it has)."""
    meta = {"model": model.model_name, "config": to_dict(model.cfg) if model.cfg is not None else None,
            "num_classes": getattr(model, "num_classes", None), "in_chans": model.in_chans}
    return {k: v for k, v in meta.items() if v is not None}


class Classifier(nn.Module):
    """stem, a sequence of stages, an optional final norm, and a pooled linear head.

    ``feature_info`` lists one dict per feature level (the stem, then each stage) with
    ``num_chs``, ``reduction`` and ``module``, as timm does; ``feature_levels()`` gives the modules
    themselves, the chain that inference rewrites (:func:`cspnet.inference.fuse.presplit_slices`)
    follow. ``in_chans`` is recorded by :func:`cspnet.create_model`.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: list[nn.Module],
        feature_info: list[dict],
        num_classes: int = 1000,
        fc_first: bool = False,
        final: nn.Module | None = None,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.final = final if final is not None else nn.Identity()
        self.feature_info = feature_info
        self.num_features = feature_info[-1]["num_chs"]
        self.num_classes = num_classes
        self.head = ClassifierHead(self.num_features, num_classes, fc_first=fc_first, drop_rate=drop_rate)
        self.model_name: str | None = None
        self.cfg = None
        self.in_chans: int | None = None

    def checkpoint_meta(self) -> dict:
        return checkpoint_meta(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes={num_classes!r} must be a non-negative integer")
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def fuse(self) -> Classifier:
        """Fold BatchNorm into the convolutions for inference (in place, eval mode); see
        :func:`cspnet.layers.fold_batchnorms`."""
        return fold_batchnorms(self)

    def feature_levels(self) -> list[nn.Module]:
        """The module producing each feature level, in ``feature_info`` order; each one's output is
        the next one's only input."""
        return [self.stem, *self.stages]


class FeatureExtractor(nn.Module):
    """``features_only=True``: returns the feature maps at ``out_indices`` (stem = 0).

    ``feature_levels()`` is the chain as in :class:`Classifier`; the outputs of the levels in
    ``out_indices`` also leave it."""

    def __init__(self, model: Classifier, out_indices: tuple[int, ...] | None = None):
        super().__init__()
        n = len(model.feature_info)
        if out_indices is None:
            out_indices = tuple(range(n))
        norm = []
        for i in out_indices:
            if not isinstance(i, int) or not -n <= i < n:
                raise ValueError(f"out_indices={tuple(out_indices)!r}: each index must be in [-{n}, {n - 1}]")
            norm.append(i % n)
        self.out_indices = tuple(norm)
        self.stem = model.stem
        last = max(self.out_indices)
        self.stages = nn.Sequential(*list(model.stages)[:last])
        self.feature_info = [model.feature_info[i] for i in self.out_indices]
        self.model_name, self.cfg, self.in_chans = model.model_name, model.cfg, model.in_chans

    def feature_levels(self) -> list[nn.Module]:
        return [self.stem, *self.stages]

    def checkpoint_meta(self) -> dict:
        return checkpoint_meta(self)

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    def reductions(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = [x] if 0 in self.out_indices else []
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if i in self.out_indices:
                feats.append(x)
        return feats


def stage_feature_info(stem_chs: int, stem_reduction: int, stages: list[tuple[int, int]]) -> list[dict]:
    """feature_info for a stem and stages given as ``(out_chs, stride)`` pairs."""
    info = [dict(num_chs=stem_chs, reduction=stem_reduction, module="stem")]
    red = stem_reduction
    for i, (chs, stride) in enumerate(stages):
        red *= stride
        info.append(dict(num_chs=chs, reduction=red, module=f"stages.{i}"))
    return info
