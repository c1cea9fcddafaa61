"""The files of a run directory.

- ``best.safetensors`` / ``last.safetensors``: the evaluated weights (the EMA when ``--ema`` is on)
  with model name, config, class names, preprocessing and epoch in the metadata, so
  ``create_model(checkpoint=...)``, ``cspnet val`` and ``cspnet predict`` need nothing else;
- ``best.json`` / ``last.json``: the same metadata, readable;
- ``last.state.pt``: everything ``--resume`` needs in one file (training weights, optimizer,
  scheduler, EMA, grad scaler, RNG, history, options), read back with ``weights_only=True``.

Each file is written with :func:`~cspnet.tools.checkpoint.atomic_write_bytes`, so a kill at any
moment leaves the previous version or the new one. The state file is written last, so it never
points past the weights next to it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from ..tools.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    model_metadata,
    read_checkpoint_meta,
    save_checkpoint,
)

STATE_FORMAT = "cspnet-train/1"
STATE_FILE = "last.state.pt"
JSON_FIELDS = ("classes", "preprocess", "epoch", "data", "task", "metrics")


def save_weights(model: nn.Module, path: Path, extra: dict) -> None:
    """``path`` (.safetensors) and its ``.json`` sidecar; ``extra`` values are stored JSON-encoded."""
    encoded = {k: json.dumps(v) for k, v in extra.items()}
    save_checkpoint(model, path, extra=encoded)
    meta = model_metadata(model, encoded)
    readable = {k: (json.loads(v) if k == "config" or k in extra else v) for k, v in meta.items()}
    atomic_write_json(path.with_suffix(".json"), readable)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_state(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from; start the run without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: not a readable training state ({first})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a cspnet training state ({STATE_FORMAT})")
    return state


def resolve_checkpoint(path: str | Path) -> Path:
    """A .safetensors file, or a run directory meaning its best checkpoint."""
    path = Path(path).expanduser()
    if path.is_dir():
        best = path / "best.safetensors"
        if not best.is_file():
            raise CheckpointError(f"{path}: holds no best.safetensors; pass a .safetensors file or a run directory")
        return best
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def read_run_meta(path: Path) -> dict:
    """The cspnet metadata of a checkpoint with the JSON-encoded extras decoded ({} if none)."""
    meta = read_checkpoint_meta(path) or {}
    for key in JSON_FIELDS:
        if isinstance(meta.get(key), str):
            try:
                meta[key] = json.loads(meta[key])
            except ValueError:
                raise CheckpointError(f"{path}: corrupt {key!r} metadata") from None
    return meta
