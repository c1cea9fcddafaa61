"""Weights on disk: .safetensors with the model name and config in the metadata, written
atomically; .pt/.pth read with ``weights_only=True``. Nothing is ever unpickled.

Every failure is a one-line :class:`CheckpointError` naming the file (and the first offending key).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

FORMAT = "cspnet/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write, fsync, rename: an interruption leaves the old file or the new one, never half of one."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"{path}: directory {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's private 0600 is not what a user expects of a result
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def model_metadata(model: nn.Module, extra: dict | None = None) -> dict[str, str]:
    """The metadata that lets ``create_model(checkpoint=...)`` rebuild ``model`` without a name."""
    from ..models.config import to_dict

    meta = {"format": FORMAT}
    name = getattr(model, "model_name", None)
    cfg = getattr(model, "cfg", None)
    if name:
        meta["model"] = name
    if cfg is not None:
        meta["config"] = json.dumps(to_dict(cfg))
    if hasattr(model, "num_classes"):
        meta["num_classes"] = str(model.num_classes)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None:
        meta["in_chans"] = str(conv.in_channels)
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return meta


def save_state_dict(state: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def save_checkpoint(model: nn.Module, path, extra: dict | None = None) -> None:
    """Write ``model``'s weights as .safetensors with its name and config in the metadata."""
    if Path(path).suffix != ".safetensors":
        raise CheckpointError(f"{path}: cspnet writes .safetensors files")
    save_state_dict(model.state_dict(), path, model_metadata(model, extra))


def _check_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    return path


def _decode_meta(raw: dict[str, str] | None, path) -> dict | None:
    if not raw or raw.get("format") != FORMAT:
        return None
    meta = dict(raw)
    try:
        if "config" in meta:
            meta["config"] = json.loads(meta["config"])
        for key in ("num_classes", "in_chans"):
            if key in meta:
                meta[key] = int(meta[key])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt cspnet metadata ({e})") from None
    return meta


def read_checkpoint_meta(path) -> dict | None:
    """cspnet metadata of a checkpoint (``model``, ``config``, ``num_classes``, ...), or None."""
    path = _check_file(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return _decode_meta(f.metadata(), path)
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable .safetensors file ({_first_line(e)})") from None
    state = _load_torch(path)
    raw = state.get("cspnet_meta") if isinstance(state, dict) else None
    return _decode_meta(raw if isinstance(raw, dict) else None, path)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _refusal(e: Exception) -> str:
    """What torch's weights-only unpickler refused, without its advice to load the file with
    ``weights_only=False`` or to allowlist the global: that is exactly what must not be done with
    an untrusted file."""
    text = str(e)
    if "Weights only load failed" not in text:
        return _first_line(e)
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    reason = found.group(1).split(" Please use")[0].strip().rstrip(".") if found else ""
    return f"refused to unpickle: {reason or 'it holds objects other than tensors'}"


def _load_torch(path: Path):
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol says nothing to a user
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable weights-only torch file ({_refusal(e)})") from None


def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .pt/.pth file (a bare state dict, or one under
    ``state_dict``/``model``/``ema``)."""
    path = _check_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({_first_line(e)})") from None
    if path.suffix not in (".pt", ".pth", ".bin"):
        raise CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r}; use .safetensors, .pt or .pth")
    obj = _load_torch(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values() if v is not None):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
        if not tensors:
            raise CheckpointError(f"{path}: holds no state dict of tensors")
        obj = tensors
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """Raise CheckpointError naming the first missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key!r} (the file does not fit this model)")
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, the model needs {tuple(value.shape)}"
            )
    for key in state:
        if key not in own:
            raise CheckpointError(f"{source}: unexpected key {key!r} (the file does not fit this model)")


def load_checkpoint_into(model: nn.Module, path) -> None:
    state = load_state_dict_file(path)
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
