"""Train and eval transforms (torchvision.transforms.v2), described by a small JSON-able dict that a
checkpoint carries so that ``val`` and ``predict`` prepare images exactly as training did.

Two styles:

- ``small`` (thumbnails up to 64 px: digits, MNIST, CIFAR): resize to ``img_size`` x ``img_size``;
  training adds a random crop from a border of ``img_size // 8`` pixels and the flip.
- ``photo``: training takes random-resized crops (scale 0.25-1) and the flip; evaluation resizes the
  shorter side to ``img_size / crop_pct`` and takes the centre crop.

Without random crops (``crop=False``) training sees the whole image, flipped at random.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from .images import to_channels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = (0.449,), (0.226,)  # the channel means of the RGB figures


def preprocess_spec(img_size: int, in_chans: int, small: bool, crop_pct: float = 0.875) -> dict:
    """The preprocessing a model is trained with; stored in its checkpoint."""
    return {
        "img_size": int(img_size),
        "in_chans": int(in_chans),
        "style": "small" if small else "photo",
        "crop_pct": float(crop_pct),
        "mean": list(GREY_MEAN if in_chans == 1 else IMAGENET_MEAN),
        "std": list(GREY_STD if in_chans == 1 else IMAGENET_STD),
    }


class ToChannels(torch.nn.Module):
    """PIL image or uint8 tensor -> ``tv_tensors.Image`` with the model's channel count."""

    def __init__(self, in_chans: int):
        super().__init__()
        self.in_chans = in_chans

    def forward(self, img):
        if isinstance(img, Image.Image):
            return v2.functional.to_image(to_channels(img, self.in_chans))
        img = tv_tensors.Image(img)
        chans = img.shape[-3]
        if chans == self.in_chans:
            return img
        if chans == 4:  # drop alpha, as for files
            img, chans = tv_tensors.Image(img[..., :3, :, :]), 3
        if chans == 1 and self.in_chans == 3:
            return v2.functional.grayscale_to_rgb(img)
        if chans == 3 and self.in_chans == 1:
            return v2.functional.rgb_to_grayscale(img, num_output_channels=1)
        raise ValueError(f"cannot turn a {chans}-channel image into {self.in_chans} channels")


def build_transform(pre: dict, train: bool, hflip: float = 0.5, crop: bool = True) -> v2.Compose:
    """``crop=False`` trains on whole images (flip only): faster to fit, for short schedules."""
    size = int(pre["img_size"])
    steps: list = [ToChannels(int(pre["in_chans"]))]
    if pre["style"] == "small":
        steps.append(v2.Resize((size, size), antialias=True))
        if train and crop:
            steps.append(v2.RandomCrop(size, padding=max(1, size // 8)))
    elif train and crop:
        steps.append(v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True))
    elif train:
        steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    else:
        steps += [v2.Resize(round(size / float(pre["crop_pct"])), antialias=True), v2.CenterCrop(size)]
    if train and hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre["mean"], pre["std"])]
    return v2.Compose(steps)
