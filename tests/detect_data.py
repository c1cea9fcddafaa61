"""Small YOLO-layout detection sets written on the fly: rectangles whose boxes are known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 64


def rectangle_image(path: Path, box: tuple[int, int, int, int], side: int = SIDE, value: int = 255,
                    size: tuple[int, int] | None = None) -> None:
    """A black image with a filled ``value`` rectangle at ``box`` (x0, y0, x1, y1, pixels)."""
    w, h = size or (side, side)
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def yolo_line(label: int, box, w: int, h: int) -> str:
    x0, y0, x1, y1 = box
    return f"{label} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n"


def rectangles_set(root: Path, n_train: int = 8, n_val: int = 4, classes: int = 2, side: int = SIDE,
                   seed: int = 0) -> Path:
    """``root/data.yaml`` over images holding one white rectangle each, labelled ``i % classes``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            w, h = int(rng.integers(side // 2, side * 3 // 2)), int(rng.integers(side // 2, side * 3 // 2))
            bw, bh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            box = (x0, y0, x0 + bw, y0 + bh)
            rectangle_image(root / "images" / split / f"{i}.png", box, size=(w, h))
            label = root / "labels" / split / f"{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(yolo_line(i % classes, box, w, h))
    names = "".join(f"  {k}: c{k}\n" for k in range(classes))
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return root
