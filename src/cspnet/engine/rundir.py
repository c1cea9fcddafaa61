"""The files of a run directory.

- ``best.safetensors`` / ``last.safetensors``: the evaluated weights (the EMA when EMA is on)
  with model name, config, class names, preprocessing and epoch in the metadata, so
  ``create_model(checkpoint=...)``, ``cspnet val`` and ``cspnet predict`` need nothing else;
- ``best.json`` / ``last.json``: the same metadata, readable;
- ``last.state.pt``: everything a resumed run needs in one file (training weights, optimizer,
  scheduler, EMA, grad scaler, RNG, history, options), read back with ``weights_only=True``.

Each file is written atomically (:mod:`cspnet.checkpoint`), so a kill at any moment leaves the
previous version or the new one. The state file is written last, so it never points past the weights
next to it.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import CheckpointError, atomic_write_bytes, load_torch_file, save_checkpoint

STATE_FORMAT = "cspnet-train/1"
STATE_FILE = "last.state.pt"
BEST, LAST = "best.safetensors", "last.safetensors"


def save_weights(model: nn.Module, path: Path, extra: dict) -> None:
    """``path`` (.safetensors) with ``extra`` in its metadata, and its ``.json`` sidecar."""
    save_checkpoint(model, path, extra, sidecar=True)


def save_state(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from; start the run without resuming")
    state = load_torch_file(path, "training state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a cspnet training state ({STATE_FORMAT})")
    return state


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory meaning its best checkpoint."""
    path = Path(path).expanduser()
    if path.is_dir():
        best = path / BEST
        if not best.is_file():
            raise CheckpointError(f"{path}: holds no {BEST}; pass a .safetensors file or a run directory")
        return best
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path
