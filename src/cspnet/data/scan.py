"""Every file of a small image folder decoded once before training.

Why: an unreadable file found mid-epoch can only be replaced by a neighbour (the batch keeps its
size) or dropped, and either way the sampler's permutation already counted it, so the readable
images train in another order than they would in a folder without the broken file. Left out
before the sampler draws, the run is the one the clean folder gives. Decoding also settles grey or
colour on every image, by content (an RGBA or palette file of grey pixels is grey), where a large
folder only has a sample of headers surveyed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from .images import UnreadableImage, is_grey, open_image

SCAN_LIMIT = 50_000  # files; decoding them takes seconds (Fashion-MNIST's 70,000 PNGs: about 20 s)
PROGRESS_FROM = 5_000  # files; a bar only where the wait is noticeable


@dataclass
class Scan:
    """The readable samples of each split (in their order), and what was found on the way."""

    splits: list[list[tuple[str, int]]]
    unreadable: list[list[str]]  # per split: one message per file left out, naming it
    grey: bool  # every readable image holds one channel of information
    side: int  # median longer side


def holds_grey(img: Image.Image) -> bool:
    """Grey by mode, or by content: colour channels that are all equal."""
    if is_grey(img):
        return True
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def scan_samples(*splits: list[tuple[str, int]]) -> Scan:
    """Decode every ``(path, label)`` of ``splits``; the unreadable ones are left out and named."""
    total = sum(map(len, splits))
    bar = tqdm(total=total, desc="checking images", unit="file", leave=False, disable=total < PROGRESS_FROM)
    kept, unreadable, sides, grey = [], [], [], True
    for samples in splits:
        readable, bad = [], []
        for path, label in samples:
            bar.update()
            try:
                img = open_image(path)
            except UnreadableImage as e:
                bad.append(str(e))
                continue
            grey = grey and holds_grey(img)
            sides.append(max(img.size))
            readable.append((path, label))
        kept.append(readable)
        unreadable.append(bad)
    bar.close()
    return Scan(kept, unreadable, grey, int(np.median(sides)) if sides else 0)
