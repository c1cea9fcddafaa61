"""The model a ``val``/``predict`` command evaluates, from ``--checkpoint`` (and ``--model`` for
weights without cspnet metadata)."""

from __future__ import annotations

from pathlib import Path


def load_checkpoint_model(args):
    """(model, metadata, checkpoint path); a one-line error when there is no checkpoint to read.

    The file is read once, and the model, its weights and the metadata returned all come from that
    one read: a checkpoint replaced meanwhile (a training run writing ``best.safetensors``) gives one
    version or the other, never one version's metadata with another's weights."""
    from ..checkpoint import read_checkpoint
    from ..engine import resolve_checkpoint
    from ..errors import printable
    from ..models import create_model

    if not getattr(args, "checkpoint", None):
        raise ValueError("give the weights to evaluate with --checkpoint (a .safetensors file or a run directory)")
    path = resolve_checkpoint(args.checkpoint)
    ckpt = read_checkpoint(path)
    meta = ckpt.meta
    if not meta and not args.model:
        raise ValueError(f"{printable(path)}: the file carries no cspnet metadata; pass --model NAME too")
    # with metadata, build from the stored config (it may carry overrides such as fusion="none");
    # a different --model name still reaches create_model, which refuses the mismatch
    name = None if meta and args.model in (None, meta.get("model")) else args.model
    model = create_model(name, checkpoint=ckpt)
    return model, meta, Path(path)
