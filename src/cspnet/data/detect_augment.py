"""Training augmentation for detection, with torchvision.transforms.v2 on ``tv_tensors.BoundingBoxes``
so every box moves with its pixels: letterbox, mosaic (four images in one), random affine scale and
translation, horizontal flip, HSV jitter; then boxes clipped to the image, and those left smaller
than ``MIN_BOX`` px (pushed out of the frame) dropped with their labels. Multi-scale training
(darknet's ``random=1``) resizes whole batches in :class:`MultiScaleCollate`.

Every random draw comes from torch's generator, which the engine seeds per epoch (and per loader
worker), so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import OptionError
from .detect import LETTERBOX_FILL, DetectionDataset, Letterbox, collate_detection

MIN_BOX = 2.0  # px; a box clipped thinner than this is no longer an object
MULTI_SCALE = (0.75, 1.25)  # the range of batch sizes around img_size (multiples of the stride)


@dataclass(frozen=True)
class Augment:
    """What training does to each sample. ``scale``: affine zoom range; ``translate``: fraction of the
    side; ``hsv``: (hue, saturation, value) jitter as in darknet's cfgs (``hue``, ``saturation``,
    ``exposure`` as fractions; hue off by default: torchvision's hue shift on a tensor costs about 2 ms
    per 128 px image on a CPU core, as much as decoding it, measured before the pipeline moved to PIL);
    ``mosaic``: probability of a four-image mosaic."""

    hflip: float = 0.5
    scale: tuple[float, float] = (0.75, 1.25)
    translate: float = 0.1
    hsv: tuple[float, float, float] = (0.0, 0.5, 0.4)
    mosaic: float = 0.0

    def __post_init__(self):
        for name in ("hflip", "mosaic", "translate"):
            if not 0 <= getattr(self, name) <= 1:
                raise OptionError(f"{{{name}}} must lie in [0, 1]", **{name: getattr(self, name)})
        if not 0 < self.scale[0] <= self.scale[1]:
            raise OptionError("{scale} must be two numbers 0 < low <= high", scale=self.scale)


def _jitter(hsv: tuple[float, float, float]) -> list:
    hue, sat, val = hsv
    if not (hue or sat or val):
        return []
    return [v2.ColorJitter(brightness=val or None, saturation=sat or None, hue=hue or None)]


def train_transforms(img_size: int, augment: Augment) -> v2.Compose:
    """The per-sample pipeline after letterbox (or mosaic): uint8 ``(image, target)`` in, float [0, 1] out.

    The pixels go through PIL for the affine and the colour jitter: on the builtin set's 128 px
    images PIL's kernels took 8 ms against the tensor kernels' 30 ms for the affine, and 2 ms against
    53 ms for the jitter (one process, a training run sharing the 2 cores, so the figures are
    inflated, the ratio is the point), and the data loader shares the CPU with the training step."""
    steps = [v2.ToPILImage()]
    if augment.scale != (1.0, 1.0) or augment.translate:
        steps.append(v2.RandomAffine(degrees=0, translate=(augment.translate,) * 2, scale=augment.scale,
                                     fill=LETTERBOX_FILL))
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip(augment.hflip))
    steps += _jitter(augment.hsv)
    return v2.Compose([*steps, v2.ToImage(), *_keep_inside(), v2.ToDtype(torch.float32, scale=True)])


def _keep_inside() -> list:
    """Boxes clipped to the image, and those left thinner than ``MIN_BOX`` dropped with their labels."""
    return [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=MIN_BOX)]


def eval_transforms(img_size: int) -> v2.Compose:
    return v2.Compose([Letterbox(img_size), v2.ToDtype(torch.float32, scale=True)])


class DetectionTrainSet(Dataset):
    """Training samples of ``records``: each letterboxed to ``img_size`` (or, with probability
    ``augment.mosaic``, four of them tiled on a 2x canvas and a random ``img_size`` window cut from
    it), then :func:`train_transforms`. Unreadable images are replaced by the next readable one and
    named in ``target["skipped"]``, as :class:`DetectionDataset` does.

    ``cache``: keep each letterboxed uint8 image after its first read (a small set decoded once, not
    every epoch; for a loader without workers, whose process lives as long as the run)."""

    def __init__(self, records, img_size: int, augment: Augment = Augment(), cache: bool = False):
        self.base = DetectionDataset(records, Letterbox(img_size), substitute=True)
        self.img_size, self.augment = int(img_size), augment
        self.post = train_transforms(img_size, augment)
        self.clip = v2.Compose(_keep_inside())
        self.cache: dict[int, tuple] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.base)

    def letterboxed(self, i: int):
        """Sample ``i`` letterboxed, untransformed (from the cache when there is one)."""
        if self.cache is None:
            return self.base[i]
        if i not in self.cache:
            self.cache[i] = self.base[i]
        image, target = self.cache[i]
        return image, dict(target)  # the transforms make new tensors; a new dict keeps the cached one as it was

    def __getitem__(self, i: int):
        if self.augment.mosaic and float(torch.rand(())) < self.augment.mosaic:
            image, target = self.mosaic(i)
        else:
            image, target = self.letterboxed(i)
        return self.post(image, target)

    def mosaic(self, i: int):
        s = self.img_size
        picks = [i, *torch.randint(len(self.base), (3,)).tolist()]
        canvas = torch.full((3, 2 * s, 2 * s), LETTERBOX_FILL, dtype=torch.uint8)
        boxes, labels, skipped = [], [], []
        for k, j in enumerate(picks):
            image, target = self.letterboxed(j)
            y, x = (k // 2) * s, (k % 2) * s
            canvas[:, y:y + s, x:x + s] = image
            boxes.append(target["boxes"].as_subclass(torch.Tensor) + torch.tensor([x, y, x, y]))
            labels.append(target["labels"])
            skipped += target.get("skipped", [])
        x0, y0 = (int(v) for v in torch.randint(s // 2, 3 * s // 2 + 1, (2,)) - s // 2)
        window = canvas[:, y0:y0 + s, x0:x0 + s]
        shifted = torch.cat(boxes) - torch.tensor([x0, y0, x0, y0])
        target = {"boxes": tv_tensors.BoundingBoxes(shifted, format="XYXY", canvas_size=(s, s)),
                  "labels": torch.cat(labels), "image_id": self.base.records[i].image_id,
                  "orig_size": (s, s)}
        if skipped:
            target["skipped"] = skipped
        # boxes cut at the window now: the pixels beyond it are gone before any affine pulls them in
        return self.clip(tv_tensors.Image(window), target)


class MultiScaleCollate:
    """Darknet's ``random=1``: each training batch resized to a random multiple of ``stride`` within
    ``MULTI_SCALE`` of ``img_size`` (boxes scaled with it); the sizes a run may draw are ``sizes``."""

    def __init__(self, img_size: int, stride: int, low_high: tuple[float, float] = MULTI_SCALE):
        lo = max(stride, round(img_size * low_high[0] / stride) * stride)
        hi = max(lo, round(img_size * low_high[1] / stride) * stride)
        self.sizes = list(range(lo, hi + 1, stride))

    def __call__(self, samples) -> dict:
        batch = collate_detection(samples)
        if not len(batch["inputs"]):
            return batch
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        old = batch["inputs"].shape[-1]
        if size != old:
            batch["inputs"] = F.interpolate(batch["inputs"], size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=size < old)
            for t in batch["targets"]:
                t["boxes"] = t["boxes"].as_subclass(torch.Tensor) * (size / old)
        return batch
