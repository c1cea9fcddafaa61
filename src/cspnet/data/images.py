"""Reading image files (or the images of a directory), with a one-line error naming the file when
one cannot be decoded, and converting any PIL mode (grey, palette, RGBA, 16-bit) to the channels a
model takes."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from ..errors import first_line

GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class UnreadableImage(ValueError):
    """An image file that is missing, corrupt or truncated."""


def open_image(path: str | Path) -> Image.Image:
    """The fully decoded image (truncated files fail here, not later in a transform)."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(f"{path}: no such image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's palette-transparency notes; we convert anyway
            img = Image.open(path)
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"{path}: not a readable image ({first_line(e)}); replace or delete the file") from None
    return img


def read_images(paths: list[str], convert=None, warn=None) -> tuple[list[str], list]:
    """The files of ``paths`` that can be read, and their images (``convert``-ed), in order. An
    unreadable one is skipped with a warning naming it, as training and evaluation skip them;
    when none can be read, the first one's error is raised."""
    import sys

    warn = warn or (lambda line: print(line, file=sys.stderr))
    kept, images, bad = [], [], []
    for path in paths:
        try:
            img = open_image(path)
        except UnreadableImage as e:
            bad.append(e)
            continue
        kept.append(path)
        images.append(convert(img) if convert else img)
    if bad and not kept:
        raise bad[0]
    for e in bad:
        warn(f"warning: skipped {e}")
    return kept, images


def image_paths(items: list[str]) -> list[str]:
    """Files as given, and each directory's image files (not its subfolders), sorted by name; a
    directory without images is an error rather than nothing to do."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    paths = []
    for item in items:
        path = Path(item)
        if not path.is_dir():
            paths.append(str(item))  # open_image names a missing or unreadable file
            continue
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not found:
            raise UnreadableImage(f"{path}: a directory with no image files ({', '.join(sorted(IMG_EXTENSIONS))}); "
                                  "pass image files or a directory that holds some")
        paths += [str(p) for p in found]
    return paths


def to_channels(img: Image.Image, in_chans: int) -> Image.Image:
    """Grey (``L``) for 1-channel models, RGB for 3-channel ones, whatever the file's mode.

    Palette images go through RGBA so transparency is honoured; alpha is then dropped (the pixels
    keep their colour); 16-bit and float grey are scaled to 8 bits rather than clipped.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans={in_chans}: image files can feed 1-channel (grey) or 3-channel (RGB) models")
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _to_8bit(img)
        mode = "L"
    target = "L" if in_chans == 1 else "RGB"
    return img if mode == target else img.convert(target)


def _to_8bit(img: Image.Image) -> Image.Image:
    import numpy as np

    a = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") else float(max(a.max(), 1.0))
    if img.mode == "F" and a.max() <= 1.0:
        top = 1.0
    return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def is_grey(img: Image.Image) -> bool:
    """True when the image holds one channel of information (grey, or a palette of greys)."""
    if img.mode in GREY_MODES:
        return True
    if img.mode == "P":
        pal = img.getpalette() or []
        rgb = list(zip(pal[0::3], pal[1::3], pal[2::3], strict=False))
        return all(r == g == b for r, g, b in rgb)
    return False
