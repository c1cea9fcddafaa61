"""Weights on disk, the one place that reads and writes them.

- ``.safetensors`` files carry cspnet's metadata (:data:`FIELDS`: model name, config, classes,
  preprocessing, ...), so ``create_model(checkpoint=...)`` needs no name; ``.pt``/``.pth`` files are
  read with ``torch.load(weights_only=True)``. Nothing is ever unpickled.
- Every write is atomic (write, fsync, rename): an interruption leaves the old file or the new one.
- A checkpoint is read once, as bytes, and its tensors and metadata both come from those bytes, so a
  file replaced while it is read gives one version or the other, never a mix.
- Every failure is a one-line :class:`CheckpointError` naming the file (and the first offending key).

The metadata schema: ``format`` and ``model`` are plain strings; every other value is stored as
JSON. :data:`FIELDS` gives the type of the known ones, checked on reading.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import first_line, printable

FORMAT = "cspnet/1"
PLAIN_FIELDS = ("format", "model")  # stored as they are; everything else is JSON
FIELDS: dict[str, type | tuple[type, ...]] = {  # known JSON fields and their types
    "config": dict,
    "num_classes": int,
    "in_chans": int,
    "classes": list,
    "preprocess": dict,
    "epoch": int,
    "data": str,
    "task": str,
    "metrics": dict,
    "converted_from": str,
}
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
TMP_GLOB = ".*.tmp"  # what an interrupted atomic write can leave behind (see atomic_write_bytes)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


# --- writing ----------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write, fsync, rename: an interruption leaves the old file or the new one, never half of one."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        what = "is a file, not a directory" if parent.exists() else "does not exist"
        raise CheckpointError(f"{printable(path)}: directory {printable(parent)} {what}")
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


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def model_metadata(model: nn.Module, extra: dict | None = None) -> dict:
    """What lets ``create_model(checkpoint=...)`` rebuild ``model`` without a name (the model's own
    ``checkpoint_meta()``: name, config, classes, input channels), plus ``extra`` (class names,
    preprocessing, epoch, ...), as plain values (see :func:`encode_metadata`)."""
    own = getattr(model, "checkpoint_meta", None)
    return {"format": FORMAT, **(own() if callable(own) else {}), **(extra or {})}


def encode_metadata(meta: dict) -> dict[str, str]:
    """The safetensors form of a metadata dict: strings, JSON for everything but :data:`PLAIN_FIELDS`."""
    return {k: (v if k in PLAIN_FIELDS else json.dumps(v)) for k, v in meta.items()}


def save_state_dict(state: dict[str, torch.Tensor], path, metadata: dict | None = None) -> None:
    """Write tensors as .safetensors with (plain-valued) ``metadata``, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    encoded = encode_metadata(metadata) if metadata else None
    atomic_write_bytes(path, save(tensors, metadata=encoded))


def save_checkpoint(model: nn.Module, path, extra: dict | None = None, sidecar: bool = False) -> dict:
    """Write ``model``'s weights as .safetensors with its name, config and ``extra`` in the metadata;
    ``sidecar`` also writes the metadata as a readable ``.json`` next to it. Returns the metadata."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{printable(path)}: cspnet writes .safetensors files")
    meta = model_metadata(model, extra)
    save_state_dict(model.state_dict(), path, meta)
    if sidecar:
        atomic_write_json(path.with_suffix(".json"), meta)
    return meta


# --- reading ----------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """The tensors of one file and its cspnet metadata (``{}`` for a file written elsewhere),
    read from the same bytes."""

    path: Path
    state: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def __fspath__(self) -> str:  # stands for its file wherever a path is expected (create_model, messages)
        return os.fspath(self.path)

    def __str__(self) -> str:
        return printable(self.path)


def _check_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{printable(path)}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{printable(path)}: not a file")
    if path.suffix == ".json":
        weights = path.with_suffix(".safetensors")
        hint = f"; the weights are {printable(weights)}" if weights.is_file() else ""
        raise CheckpointError(f"{printable(path)}: a JSON file (a checkpoint's readable metadata), not weights{hint}")
    if path.suffix not in SUFFIXES:
        raise CheckpointError(f"{printable(path)}: unknown checkpoint type {path.suffix!r}; use .safetensors, .pt "
                              "or .pth")
    return path


def _kind_of(head: bytes) -> str | None:
    """What a file that torch cannot read is, from its first bytes (None: nothing recognisable)."""
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "a JSON file"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        return "a .safetensors file"
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff":
        return "an image"
    return None


def decode_metadata(raw: dict | None, path) -> dict:
    """Inverse of :func:`encode_metadata` for a cspnet file ({} for any other); a known field of
    the wrong type is a CheckpointError. A value that is not JSON is kept as the string it is
    where the field is a string (files written before every value was JSON)."""
    if not raw or raw.get("format") != FORMAT:
        return {}
    meta = {}
    for key, text in raw.items():
        if key in PLAIN_FIELDS:
            meta[key] = text
            continue
        kind = FIELDS.get(key)
        try:
            value = json.loads(text)
        except (TypeError, ValueError):
            if kind not in (None, str):
                raise CheckpointError(f"{printable(path)}: corrupt {key!r} metadata (not JSON)") from None
            value = text
        if kind is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is int):
            raise CheckpointError(f"{printable(path)}: corrupt {key!r} metadata (a {type(value).__name__}, not a "
                                  f"{kind.__name__})")
        meta[key] = value
    return meta


def _safetensors_metadata(data: bytes) -> dict | None:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]).get("__metadata__")


def _refusal(e: Exception) -> str:
    """What torch's weights-only unpickler refused, without its advice to load the file with
    ``weights_only=False`` or to allowlist the global: that is exactly what must not be done with
    an untrusted file."""
    text = str(e)
    if "Weights only load failed" not in text:
        return first_line(e)
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    reason = found.group(1).split(" Please use")[0].strip().rstrip(".") if found else ""
    return f"refused to unpickle: {reason or 'it holds objects other than tensors'}"


def load_torch_file(path: Path, what: str = "weights-only torch file"):
    """``torch.load(weights_only=True)`` of a file; any failure is a one-line CheckpointError
    saying it is not a readable ``what``."""
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol says nothing to a user
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        try:
            with open(path, "rb") as f:
                kind = _kind_of(f.read(64))
        except OSError:
            kind = None
        if kind is not None:  # not a pickle at all: say what it is rather than which opcode failed
            raise CheckpointError(f"{printable(path)}: {kind}, not a {what}") from None
        raise CheckpointError(f"{printable(path)}: not a readable {what} ({_refusal(e)})") from None


def _tensors_of(obj, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a torch file: a bare one, or one under ``state_dict``/``model``/``ema``."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise CheckpointError(f"{printable(path)}: holds no state dict of tensors")
    return tensors


def read_checkpoint(path) -> Checkpoint:
    """Tensors and metadata of a .safetensors or .pt/.pth file, from one read of it (a
    :class:`Checkpoint` already read is returned as it is, so callers can read once and pass it on)."""
    if isinstance(path, Checkpoint):
        return path
    path = _check_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load

        data = path.read_bytes()
        try:
            state = load(data)
            raw = _safetensors_metadata(data)
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{printable(path)}: not a readable .safetensors file ({first_line(e)})") from None
        return Checkpoint(path, state, decode_metadata(raw, path))
    obj = load_torch_file(path)
    raw = obj.get("cspnet_meta") if isinstance(obj, dict) else None
    return Checkpoint(path, _tensors_of(obj, path), decode_metadata(raw if isinstance(raw, dict) else None, path))


def read_metadata(path) -> dict:
    """The cspnet metadata of a checkpoint ({} if it has none), without loading its tensors
    where the format allows (safetensors reads only the header)."""
    path = _check_file(path)
    if path.suffix != ".safetensors":
        return read_checkpoint(path).meta
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata()
    except Exception as e:
        raise CheckpointError(f"{printable(path)}: not a readable .safetensors file ({first_line(e)})") from None
    return decode_metadata(raw, path)


def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .pt/.pth file."""
    return read_checkpoint(path).state


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


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source) -> None:
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)
