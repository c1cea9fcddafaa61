"""Figures and images, made and written the way every result file is: matplotlib's Agg backend (no
display needed, imported on first use) and the PNG written atomically."""

from __future__ import annotations

import io
import os


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (unless the user chose another one)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Lay ``fig`` out, write it to ``path`` as PNG (atomically) and close it."""
    from .checkpoint import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def save_image(pixels, path: str | os.PathLike) -> None:
    """A uint8 CHW tensor (an image with boxes drawn, say) as a PNG, written atomically."""
    from PIL import Image

    from .checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
