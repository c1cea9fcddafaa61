"""A one-stage detector: backbone (any zoo model's feature levels) -> neck -> YOLO outputs.

``forward`` returns the raw output maps (what the loss and darknet's ``[yolo]`` layers read), one
per output in the neck's order; :meth:`Detector.predict` runs images end to end (letterbox,
forward, decode, class-wise NMS, boxes mapped back to each image) and returns one dict per image,
``{"boxes" (xyxy, pixels), "scores", "labels"}``, as torchvision's detectors do. Inputs are RGB in
[0, 1], as darknet feeds them (no mean/std).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as F

from ..data.detect import letterbox, unletterbox_boxes
from ..data.images import open_image, to_channels
from ..errors import OptionError
from ..layers import fold_batchnorms
from ..models.classifier import checkpoint_meta
from .head import OutputConv
from .yolo_decode import YoloHead, decode, nms

ImageLike = torch.Tensor | Image.Image | str | os.PathLike


class Detector(nn.Module):
    """``backbone`` (returns its feature levels, fine to coarse), ``neck`` (returns one map per
    output), ``head`` (one :class:`~cspnet.detection.head.OutputConv` per output).

    ``heads`` describe the outputs for decoding (anchors in input pixels, classes, ``scale_x_y``),
    ``strides`` their down-sampling, ``img_size`` the input size :meth:`predict` letterboxes to.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, heads: Sequence[YoloHead], strides: Sequence[int],
                 head_mid: Sequence[int | None], img_size: int, act: str = "leaky"):
        super().__init__()
        if len({h.num_classes for h in heads}) != 1:
            raise ValueError("every output of a detector predicts the same classes")
        self.backbone, self.neck = backbone, neck
        self.head = nn.ModuleList(OutputConv(c, m, h, act) for c, m, h in zip(neck.out_chs, head_mid, heads,
                                                                              strict=True))
        self.heads, self.strides, self.img_size = list(heads), list(strides), int(img_size)
        self.num_classes = heads[0].num_classes
        self.model_name: str | None = None
        self.cfg = None
        self.in_chans: int | None = getattr(backbone, "in_chans", None)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [head(f) for head, f in zip(self.head, self.neck(self.backbone(x)), strict=True)]

    @property
    def feature_info(self) -> list[dict]:
        """One dict per output: its stride, channels and anchors (what ``cspnet info`` prints)."""
        return [{"num_chs": h.pred.out_channels, "reduction": s, "module": f"head.{i}", "anchors": h.head.anchors}
                for i, (h, s) in enumerate(zip(self.head, self.strides, strict=True))]

    def reset_classifier(self, num_classes: int) -> None:
        """New (prior-initialised) prediction convs for ``num_classes`` classes; the rest is kept
        (fine-tuning a detector on other classes)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r} must be a positive integer")
        self.heads = [replace(h, num_classes=num_classes) for h in self.heads]
        for out, head in zip(self.head, self.heads, strict=True):
            old = out.pred
            out.pred = nn.Conv2d(old.in_channels, head.num_anchors * (5 + num_classes), 1).to(old.weight.device)
            out.head = head
        self.num_classes = num_classes
        self.init_priors()

    def init_priors(self) -> None:
        for head, stride in zip(self.head, self.strides, strict=True):
            head.init_prior(stride, self.img_size)

    def load_backbone(self, path) -> dict:
        """Start the backbone from a classification checkpoint (a ``cspnet train`` run, or a timm or
        darknet model converted with ``cspnet convert``), as the paper starts its detectors from
        ImageNet weights. Tensors whose name and shape match are loaded (at least half of the
        backbone's, else ValueError); returns what happened:
        ``loaded``, ``missing`` (backbone tensors the file lacks), ``unused`` (the file's other
        tensors, e.g. its classifier), ``mismatched`` (same name, another shape)."""
        from ..checkpoint import read_checkpoint

        state = read_checkpoint(path).state
        if state and all(k.startswith("backbone.") for k in state):  # a detector's checkpoint
            state = {k[len("backbone."):]: v for k, v in state.items()}
        own = self.backbone.state_dict()
        fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        report = {"loaded": sorted(fits), "missing": sorted(set(own) - set(fits)),
                  "unused": sorted(set(state) - set(own)),
                  "mismatched": sorted(k for k in state if k in own and own[k].shape != state[k].shape)}
        if len(fits) < len(own) / 2:  # a few BatchNorm counters fitting by chance is not a start
            raise ValueError(f"{path}: only {len(fits)} of the backbone's {len(own)} tensors "
                             f"({getattr(self.cfg, 'backbone', 'backbone')}) are in it with their shapes; "
                             "is it that model's checkpoint?")
        self.backbone.load_state_dict(fits, strict=False)
        return report

    def darknet_order(self) -> list[str]:
        """The parts in the order a darknet cfg writes their convolutions (backbone, then the neck's
        and heads' interleaved as the neck says)."""
        return ["backbone", *(p if p.startswith("head.") else f"neck.{p}" for p in self.neck.darknet_order())]

    def checkpoint_meta(self) -> dict:
        return checkpoint_meta(self)

    def fuse(self) -> Detector:
        """Fold BatchNorm into the convolutions for inference (in place, eval mode)."""
        return fold_batchnorms(self)

    # --- inference ----------------------------------------------------------------------------

    def decode(self, raws: Sequence[torch.Tensor], img_size=None) -> torch.Tensor:
        """Raw maps -> ``(B, N, 5 + C)``: xyxy in input pixels, objectness, class probabilities."""
        if img_size is None:
            h, w = raws[0].shape[-2] * self.strides[0], raws[0].shape[-1] * self.strides[0]
            img_size = (h, w)
        return decode(raws, self.heads, img_size)

    def _check_size(self, size: int) -> int:
        stride = max(self.strides)
        if isinstance(size, bool) or not isinstance(size, int) or size < stride or size % stride:
            raise OptionError(f"{{img_size}} must be a positive multiple of the detector's stride {stride}",
                              img_size=size)
        return size

    @torch.no_grad()
    def predict(self, images: ImageLike | Sequence[ImageLike], conf: float = 0.25, iou: float = 0.45,
                max_det: int = 300, img_size: int | None = None, batch_size: int = 8) -> list[dict]:
        """Detections for each image (a path, a PIL image or a CHW tensor: uint8, or float in [0, 1];
        any sizes): letterboxed to ``img_size`` (default the model's), decoded, objectness x class
        probability over ``conf``, class-wise NMS at ``iou`` (``torchvision.ops.batched_nms``), at most
        ``max_det`` per image, boxes in the image's own pixels (clipped to it)."""
        size = self._check_size(self.img_size if img_size is None else img_size)
        return predict_images(self, self.heads, images, size, conf, iou, max_det, batch_size)


def check_thresholds(conf: float, iou: float, max_det: int) -> None:
    for name, value in (("conf", conf), ("iou", iou)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise OptionError(f"{{{name}}} must lie in [0, 1]", **{name: value})
    if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1:
        raise OptionError("{max_det} must be a positive integer", max_det=max_det)


@torch.no_grad()
def predict_images(model: nn.Module, heads: Sequence[YoloHead], images, size: int, conf: float = 0.25,
                   iou: float = 0.45, max_det: int = 300, batch_size: int = 8) -> list[dict]:
    """:meth:`Detector.predict` for any module whose forward gives raw YOLO maps described by ``heads``
    (a native detector, or a darknet cfg's network): letterbox to ``size``, decode, NMS, boxes back in
    each image's pixels."""
    check_thresholds(conf, iou, max_det)
    single = isinstance(images, (torch.Tensor, Image.Image, str, os.PathLike)) and not (
        isinstance(images, torch.Tensor) and images.dim() == 4)
    items = [images] if single else list(images)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(items), batch_size):
            chunk = [_as_image(img) for img in items[start:start + batch_size]]
            boxed = [letterbox(img, size) for img in chunk]
            x = torch.stack([b for b, _ in boxed]).to(device)
            dets = nms(decode(model(x), heads, (size, size)), conf, iou, max_det)
            for det, img, (_, params) in zip(dets, chunk, boxed, strict=True):
                det["boxes"] = unletterbox_boxes(det["boxes"], params, tuple(img.shape[-2:]))
                results.append(det)
    finally:
        model.train(was_training)
    return results


def _as_image(image: ImageLike) -> torch.Tensor:
    """A float RGB CHW tensor in [0, 1] from a path, a PIL image or a tensor."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    if isinstance(image, Image.Image):
        return F.to_dtype(F.pil_to_tensor(to_channels(image, 3)), torch.float32, scale=True)
    if isinstance(image, torch.Tensor) and image.dim() == 3 and image.shape[0] in (1, 3):
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        return F.to_dtype(image, torch.float32, scale=True) if image.dtype == torch.uint8 else image.float()
    shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
    raise ValueError(f"an image for predict must be a path, a PIL image or a 1- or 3-channel CHW tensor, not {shape}")
