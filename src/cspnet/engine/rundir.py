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

A run holds its directory for its whole life (:func:`claim_run_dir`): an exclusive ``flock`` on the
directory itself, so a second run on the same directory is refused at its start, and a run killed
(even with ``kill -9``) releases it with its process: the kernel drops the lock, no stale lock file
is left to block the next run.
"""

from __future__ import annotations

import fcntl
import io
import os
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import TMP_GLOB, CheckpointError, atomic_write_bytes, load_torch_file, save_checkpoint
from ..errors import printable

STATE_FORMAT = "cspnet-train/1"
STATE_FILE = "last.state.pt"
BEST, LAST = "best.safetensors", "last.safetensors"
EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard's files: worth nothing without a finished epoch


class RunDirBusy(ValueError):
    """Another process holds the run directory."""


class RunDirClaim:
    """A run directory held by this process (an exclusive flock on the directory), from
    :func:`claim_run_dir` until :meth:`release`."""

    def __init__(self, path: Path, fd: int, made: list[Path]):
        self.path, self._fd, self.made = path, fd, made  # made: the folders this run created, deepest first

    def release(self, failed: bool = False) -> None:
        """Let the directory go. A ``failed`` run that finished no epoch leaves nothing behind: its
        TensorBoard files and temporary files go, and so do the (then empty) folders this run made."""
        if self._fd is None:
            return
        try:
            if failed and not (self.path / STATE_FILE).exists():
                for junk in (*self.path.glob(EVENTS_GLOB), *self.path.glob(TMP_GLOB)):
                    junk.unlink(missing_ok=True)
                for folder in self.made:
                    try:
                        folder.rmdir()  # only if empty: what another run or the user put there stays
                    except OSError:
                        break
        finally:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def claim_run_dir(path: Path, exclusive_create: bool = False) -> RunDirClaim:
    """Hold ``path`` for this run: created if missing (``exclusive_create``: it must not exist yet,
    FileExistsError otherwise), then locked without waiting; a directory another run holds is a
    one-line :class:`RunDirBusy`. Temporary files a killed run left behind are removed."""
    path = Path(path)
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        if exclusive_create:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
            made = made or [path]  # it did not exist a moment ago: this run made it
        else:
            path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        if exclusive_create:
            raise
        raise ValueError(f"{printable(path)}: exists and is not a directory; pick another --out") from None
    except OSError as e:
        raise ValueError(f"{printable(path)}: cannot create the run directory ({e.strerror})") from None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirBusy(f"{printable(path)}: another cspnet train is running in this directory; wait for it to "
                         "end or pick another --out") from None
    for stale in path.glob(TMP_GLOB):  # a killed writer's half-written file: we hold the directory now
        stale.unlink(missing_ok=True)
    return RunDirClaim(path, fd, made)


def save_weights(model: nn.Module, path: Path, extra: dict) -> None:
    """``path`` (.safetensors) with ``extra`` in its metadata, and its ``.json`` sidecar."""
    save_checkpoint(model, path, extra, sidecar=True)


def save_state(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{printable(path)}: no training state to resume from; start the run without resuming")
    state = load_torch_file(path, "training state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{printable(path)}: not a cspnet training state ({STATE_FORMAT})")
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
