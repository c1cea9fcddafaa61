"""``builtin`` detection data: scikit-learn's handwritten digits (real 8x8 scans) pasted at random
positions, sizes and colours (bright ink, dark outline) onto crops of the two photographs scikit-
learn ships, with their tight boxes and digit classes. No download; the same files on every machine
(one seeded generator).

The set is written once, in YOLO layout, under the cache directory (``$CSPNET_CACHE``, else
``~/.cache/cspnet``), so every tool that reads detection data (training, ``val``, ``predict``,
``anchors``, a user's eyes) reads it as it would a user's own. Train and validation digits come from
different scans, so validation measures reading unseen handwriting, not recalling pasted pixels.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

NAME = "builtin-digits-detect-v2"  # a new version of the generator gets a new name
IMG_SIZE = 128
SPLIT_IMAGES = {"train": 1000, "val": 200}
DIGITS_PER_IMAGE = (1, 4)
DIGIT_SIDE = (24, 48)  # px of the pasted 8x8 scan's square
VAL_SCANS = 400  # the last scans of the 1,797 are the validation split's
ALPHA_EDGE = 0.3  # ink opacity at which a pixel is inside the box
OUTLINE_DARKNESS = 0.75
SEED = 0


def cache_dir() -> Path:
    return Path(os.environ.get("CSPNET_CACHE") or Path.home() / ".cache" / "cspnet").expanduser()


def builtin_detection_root() -> Path:
    """The folder holding the set's ``data.yaml``; generated (a few seconds) the first time."""
    root = cache_dir() / NAME
    if (root / "data.yaml").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.", dir=root.parent))
    try:
        _write(tmp)
        try:
            os.rename(tmp, root)  # atomic: a second process generating at once keeps the first one's copy
        except OSError:
            if not (root / "data.yaml").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _backgrounds() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(img, dtype=np.uint8) for img in load_sample_images().images]


def _crop(rng: np.random.Generator, photos: list[np.ndarray]) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.integers(IMG_SIZE, min(h, w) + 1))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((IMG_SIZE, IMG_SIZE), Image.BILINEAR)
    return np.asarray(crop, dtype=np.float32)


def _overlaps(box, boxes) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)


def _paste(rng, canvas: np.ndarray, scan: np.ndarray, placed: list) -> list[float] | None:
    """Paste one scan somewhere free; its tight box (x0, y0, x1, y1), or None if no room was found."""
    side = int(rng.integers(DIGIT_SIDE[0], DIGIT_SIDE[1] + 1))
    for _ in range(20):
        x, y = (int(v) for v in rng.integers(0, IMG_SIZE - side + 1, size=2))
        if not _overlaps((x, y, x + side, y + side), placed):
            break
    else:
        return None
    glyph = Image.fromarray((scan * (255 / 16)).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    alpha = np.asarray(glyph, dtype=np.float32)[..., None] / 255
    # bright ink with a dark outline, as subtitles are drawn: legible on any photograph
    outline = glyph.filter(ImageFilter.MaxFilter(2 * (side // 16) + 1)).filter(ImageFilter.GaussianBlur(side / 24))
    shade = np.asarray(outline, dtype=np.float32)[..., None] / 255 * OUTLINE_DARKNESS
    patch = canvas[y:y + side, x:x + side] * (1 - shade)
    ink = rng.uniform(200, 255, size=3)
    canvas[y:y + side, x:x + side] = patch * (1 - alpha) + ink * alpha
    rows, cols = np.nonzero(alpha[..., 0] > ALPHA_EDGE)
    placed.append((x, y, x + side, y + side))
    return [x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1]


def _write(root: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    photos = _backgrounds()
    rng = np.random.default_rng(SEED)
    scans = {"train": np.arange(len(digits.target) - VAL_SCANS), "val": np.arange(len(digits.target) - VAL_SCANS,
                                                                                  len(digits.target))}
    for split, count in SPLIT_IMAGES.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            canvas, placed, lines = _crop(rng, photos), [], []
            for _ in range(int(rng.integers(DIGITS_PER_IMAGE[0], DIGITS_PER_IMAGE[1] + 1))):
                k = int(rng.choice(scans[split]))
                box = _paste(rng, canvas, digits.images[k], placed)
                if box is None:
                    continue
                cx, cy = (box[0] + box[2]) / 2 / IMG_SIZE, (box[1] + box[3]) / 2 / IMG_SIZE
                w, h = (box[2] - box[0]) / IMG_SIZE, (box[3] - box[1]) / IMG_SIZE
                lines.append(f"{digits.target[k]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            name = f"{split}_{i:04d}"
            pixels = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
            pixels.save(root / "images" / split / f"{name}.png", compress_level=1)
            (root / "labels" / split / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    names = "".join(f"  {d}: '{d}'\n" for d in range(10))
    (root / "data.yaml").write_text(f"# {NAME}: scikit-learn's digits on its sample photographs (cspnet)\n"
                                    f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}")
