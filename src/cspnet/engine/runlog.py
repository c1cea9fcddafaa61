"""Per-epoch records of a run: ``results.csv`` (rewritten atomically each epoch), ``results.png``
(curves, drawn at the end), and TensorBoard event files when tensorboard is installed."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from ..checkpoint import atomic_write_bytes
from ..errors import first_line, printable
from ..plots import pyplot, save_figure


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def plot_curves(path: Path, rows: list[dict], panels: dict[str, list[str]], title: str = "") -> None:
    """One panel per entry of ``panels`` (title -> columns), epochs on the x axis; atomic PNG."""
    plt = pyplot()
    panels = {t: [c for c in cols if any(c in r for r in rows)] for t, cols in panels.items()}
    panels = {t: cols for t, cols in panels.items() if cols}
    if not rows or not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (name, cols) in zip(axes[0], panels.items(), strict=True):
        for col in cols:
            pts = [(r["epoch"], r[col]) for r in rows if r.get(col) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None, ms=3, label=col)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(printable(title), fontsize=10)
    save_figure(fig, path)


class TensorBoard:
    """Scalars to TensorBoard event files in the run directory; a no-op without tensorboard.

    The writer opens at the first :meth:`log` (after an epoch's checkpoint), so a run that fails
    before finishing an epoch leaves no event file; a writer that cannot open (TensorBoard cannot
    write paths that are not UTF-8) is a one-line warning through ``warn``, never the run's end."""

    def __init__(self, run_dir: Path | None, warn: Callable[[str], None] = print):
        self.run_dir, self.warn, self.writer = run_dir, warn, None

    def _open(self):
        if self.writer is None and self.run_dir is not None:
            run_dir, self.run_dir = self.run_dir, None  # one try
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                return None
            try:
                self.writer = SummaryWriter(str(run_dir))
            except Exception as e:
                self.warn(f"warning: no TensorBoard events in {printable(run_dir)} ({printable(first_line(e, 200))})")
        return self.writer

    def log(self, row: dict, step: int) -> None:
        if self._open() is None:
            return
        try:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()
        except Exception as e:  # events are an extra: the run goes on without them
            self.warn(f"warning: TensorBoard events stopped ({printable(first_line(e, 200))})")
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except Exception:
                pass  # already warned about, or nothing left to write
