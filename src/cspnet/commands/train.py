"""``cspnet train``, ``cspnet val`` and ``cspnet predict``: image classification end to end.

``cspnet train`` with no options trains a tiny CSP model on the built-in digits. Under
``torchrun --nproc_per_node=N -m cspnet train ...`` the same command runs DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .args import non_negative_float, non_negative_int, positive_float, positive_int

DEFAULT_MODEL = "cspresnext_tiny"
DEFAULT_EPOCHS = 15
RUNS = Path("runs")
MAX_NAMED = 5  # unreadable files named one by one before the rest are only counted


def _model_option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: write KEY=VALUE, e.g. fusion=none")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _common(p, batch_default: int) -> None:
    p.add_argument("--batch-size", type=positive_int, default=batch_default,
                   help=f"global batch over all processes (default {batch_default})")
    p.add_argument("--workers", type=non_negative_int, default=None,
                   help="data-loading processes per rank (default: 0 for in-memory data, else up to 8)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--amp", nargs="?", const="auto", default="none", choices=("none", "auto", "bf16", "fp16"),
                   help="mixed precision: --amp alone means bf16 on CPU, fp16 on CUDA")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op CPU threads (default: torch's)")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a classifier (default: a tiny CSP model on the built-in digits)",
                       description="Train an image classifier. The run directory gets best/last .safetensors "
                                   "(+ .json), last.state.pt (for --resume), results.csv, results.png and "
                                   "metrics.json.")
    p.add_argument("--model", default=None, help=f"model name, see `cspnet list` (default {DEFAULT_MODEL})")
    p.add_argument("--data", default=None, help="builtin (default), an ImageFolder dir with train/ and val/, "
                                                "a CIFAR python-batches dir, or torchvision:NAME:ROOT")
    p.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="training resolution (default 32 for images up to 64 px, else 224)")
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=None,
                   help="model input channels (default: 1 for all-grey data, else 3; images are converted)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate (default: 0.2 (sgd) or 0.002 (adamw) x batch / 256)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--momentum", type=non_negative_float, default=0.9)
    p.add_argument("--weight-decay", type=non_negative_float, default=None,
                   help="default 5e-4 (sgd) or 0.05 (adamw); never on biases and norm weights")
    p.add_argument("--warmup-epochs", type=non_negative_float, default=1.0)
    p.add_argument("--label-smoothing", type=non_negative_float, default=0.1)
    p.add_argument("--hflip", type=non_negative_float, default=None,
                   help="horizontal-flip probability (default 0.5; 0 for the digits)")
    p.add_argument("--no-crop", dest="crop", action="store_false",
                   help="no random crops in training (flip only): fits faster in short schedules")
    p.add_argument("--ema", action="store_true", help="evaluate and save an EMA of the weights")
    p.add_argument("--ema-decay", type=positive_float, default=0.9998)
    p.add_argument("--clip-grad", type=non_negative_float, default=0.0, help="max gradient norm (0: off)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on CUDA)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on CUDA: BatchNorm statistics over the global batch, so N processes "
                        "train like one (torch has no CPU SyncBatchNorm)")
    p.add_argument("--set", dest="model_args", type=_model_option, action="append", default=[],
                   metavar="KEY=VALUE", help="model config override, e.g. --set fusion=none (the baseline)")
    p.add_argument("--checkpoint", default=None, help="start from these weights (.safetensors or run dir)")
    p.add_argument("--out", default=None, help="run directory (default runs/train/MODEL, numbered)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: the newest run) from its last epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _common(p, 64)
    p.set_defaults(func=run_train)

    p = sub.add_parser("val", help="evaluate a checkpoint on a data set's validation split")
    p.add_argument("--checkpoint", required=True, help="a .safetensors file or a run directory (its best)")
    p.add_argument("--data", default=None, help="data spec (default: the one the checkpoint was trained on)")
    p.add_argument("--model", default=None, help="model name, for weights without cspnet metadata")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="only for weights without cspnet metadata (default 224)")
    p.add_argument("--out", default=None, help="run directory for metrics.json (default runs/val/NAME)")
    _common(p, 256)
    p.set_defaults(func=run_val)

    p = sub.add_parser("predict", help="top-5 classes of image files")
    p.add_argument("--checkpoint", required=True, help="a .safetensors file or a run directory (its best)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or directories (their images, sorted)")
    p.add_argument("--model", default=None, help="model name, for weights without cspnet metadata")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="only for weights without cspnet metadata (default 224)")
    p.add_argument("--top", type=positive_int, default=5, help="how many classes to show (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--compile", action="store_true",
                   help="let the inference optimizer also try torch.compile and oneDNN Graph (a one-time "
                        "cost of seconds to minutes; pays off for many images)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op CPU threads (default: torch's)")
    p.set_defaults(func=run_predict)


# --- shared -----------------------------------------------------------------------------------


def _set_threads(n: int | None) -> None:
    if n is not None:
        torch.set_num_threads(n)


def _default_workers(data) -> int:
    from ..data.sources import TensorImages

    if isinstance(data.train.source, TensorImages):
        return 0
    return min(8, os.cpu_count() or 1)


def _numbered_dir(base: Path) -> Path:
    if not base.exists():
        return base
    k = 2
    while Path(f"{base}-{k}").exists():
        k += 1
    return Path(f"{base}-{k}")


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "run"


def _load_model_for_eval(args):
    """(model, metadata, checkpoint path) for ``val``/``predict``."""
    from ..engine import read_run_meta, resolve_checkpoint
    from ..models import create_model, list_models

    path = resolve_checkpoint(args.checkpoint)
    meta = read_run_meta(path)
    list_models()  # registers the config types; create_model(checkpoint=) without a name needs them
    if not meta and not args.model:
        raise ValueError(f"{path}: the file carries no cspnet metadata; pass --model NAME too")
    # with metadata, build from the stored config (it may carry overrides such as fusion="none");
    # a different --model name still reaches create_model, which refuses the mismatch
    name = None if meta and args.model in (None, meta.get("model")) else args.model
    model = create_model(name, checkpoint=str(path))
    return model, meta, path


def _preprocess_for(model, meta: dict, img_size: int | None) -> dict:
    from ..data import preprocess_spec

    pre = meta.get("preprocess")
    if pre is None:
        pre = preprocess_spec(img_size or 224, _in_chans(model), small=False)
    elif img_size is not None and img_size != pre["img_size"]:
        pre = dict(pre, img_size=img_size)
    return pre


def _in_chans(model) -> int:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels


def _class_names(meta: dict, model) -> list[str]:
    classes = meta.get("classes")
    return list(classes) if classes else [str(i) for i in range(model.num_classes)]


# --- train ------------------------------------------------------------------------------------


def _latest_run() -> Path:
    root = RUNS / "train"
    runs = [p.parent for p in root.glob("*/last.state.pt")] if root.is_dir() else []
    if not runs:
        raise ValueError(f"--resume: no run with last.state.pt under {root}; pass --out RUN_DIR")
    return max(runs, key=lambda p: (p / "last.state.pt").stat().st_mtime)


def _resume_args(args):
    """The saved options of the run to resume (its model and data win over the command line)."""
    from ..engine import STATE_FILE, load_state

    run_dir = Path(args.out) if args.out else _latest_run()
    if not run_dir.is_dir():
        raise ValueError(f"--resume: {run_dir} is not a run directory")
    state = load_state(run_dir / STATE_FILE)
    saved = {**vars(args), **state["args"]}  # options newer than the run keep this command's values
    if args.model is not None and args.model != saved["model"]:
        raise ValueError(
            f"--resume: {run_dir} trains model {saved['model']!r}, not {args.model!r}; "
            "drop --model or choose another --out"
        )
    if args.data is not None and args.data != saved["data"]:
        raise ValueError(f"--resume: {run_dir} trains on {saved['data']!r}, not {args.data!r}; drop --data")
    for key in ("quiet", "threads", "device"):  # how to run; loader workers stay: they draw the augmentation
        saved[key] = getattr(args, key)
    saved.update(out=str(run_dir), resume=True)
    return type(args)(**saved), state


def _new_run_dir(args, dist) -> Path:
    from ..engine.distributed import broadcast_object

    if args.out:
        run_dir = Path(args.out)
        if (run_dir / "last.state.pt").exists():
            raise ValueError(f"{run_dir} already holds a run; add --resume to continue it or pick another --out")
    else:
        run_dir = _numbered_dir(RUNS / "train" / _safe_name(args.model))
    return Path(broadcast_object(str(run_dir), dist))  # the Trainer creates it once the options are checked


def _train_config(args):
    from ..engine import TrainConfig

    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        momentum=args.momentum, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        ema=args.ema, ema_decay=args.ema_decay, amp=args.amp, channels_last=args.channels_last,
        clip_grad=args.clip_grad, seed=args.seed, deterministic=args.deterministic, sync_bn=args.sync_bn,
        workers=args.workers, progress=not args.quiet,
    )


def run_train(args) -> int:
    from ..engine import init_distributed, shutdown

    _set_threads(args.threads)
    dist = init_distributed(args.device)
    where: dict = {}
    try:
        return _train(args, dist, where)
    except KeyboardInterrupt:
        if dist.is_main and "run_dir" in where:
            print(f"interrupted; continue with: cspnet train --resume --out {where['run_dir']}", file=sys.stderr)
        raise
    finally:
        shutdown(dist)


def _train(args, dist, where: dict) -> int:
    from ..data import build_classify_data, collate
    from ..engine import ClassificationTask, Trainer
    from ..engine.runtime import seed_everything
    from ..models import create_model, get_entry
    from ..tools.profile import count_params

    state = None
    if args.resume:
        args, state = _resume_args(args)
    args.model = args.model or DEFAULT_MODEL
    args.data = args.data or "builtin"
    get_entry(args.model)  # an unknown name fails before any data is read
    if args.ema_decay >= 1:
        raise ValueError(f"--ema-decay {args.ema_decay} must be below 1")
    overrides = dict(args.model_args)
    in_chans = args.in_chans
    if args.checkpoint and not state:
        from ..engine import read_run_meta, resolve_checkpoint

        args.checkpoint = str(resolve_checkpoint(args.checkpoint))
        if in_chans is None:  # fine-tuning keeps the checkpoint's input channels
            in_chans = read_run_meta(Path(args.checkpoint)).get("in_chans")
    data = build_classify_data(args.data, args.img_size, in_chans, args.hflip, crop=args.crop)
    if args.workers is None:
        args.workers = _default_workers(data)
    seed_everything(args.seed)
    model = create_model(
        args.model, num_classes=len(data.classes), in_chans=data.in_chans,
        checkpoint=args.checkpoint if not state else None, **overrides,
    )
    run_dir = Path(args.out) if state else _new_run_dir(args, dist)
    where["run_dir"] = run_dir
    saved_args = {k: v for k, v in vars(args).items() if k != "func"}
    params = count_params(model)[0]
    trainer = Trainer(
        model, ClassificationTask(len(data.classes), args.label_smoothing), data.train, data.val, collate,
        _train_config(args), dist, run_dir,
        extra={"classes": data.classes, "preprocess": data.preprocess, "data": args.data},
        info={"model": args.model, "data": args.data, "params": params, "run_dir": str(run_dir)},
        title=f"{args.model} on {args.data}",
    )
    if state is not None:
        trainer.load_state_dict(state)
    if dist.is_main:
        pre = data.preprocess
        what = f"resuming at epoch {trainer.epoch + 1}" if state else "training"
        if trainer.epoch >= trainer.cfg.epochs:
            what = f"finishing (all {trainer.epoch} epochs done; writing metrics.json and results.png)"
        print(f"{what}: {args.model} ({params / 1e6:.3f} M params, {pre['in_chans']}x{pre['img_size']}x"
              f"{pre['img_size']}) on {args.data}: {len(data.train)} train / {len(data.val)} val images, "
              f"{len(data.classes)} classes; {dist.world_size} process(es) on {dist.device}; run dir {run_dir}",
              flush=True)
    final = trainer.fit(saved_args)
    if dist.is_main:
        print(f"{trainer.epoch} epochs in {final['wall_s']:.0f} s; best top-1 "
              f"{final['best_top1']:.2f}% at epoch {final['best_epoch']} ({run_dir / 'best.safetensors'})")
        print(f"val top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}%  (epoch {final['epoch']}, "
              f"{run_dir / 'last.safetensors'})", flush=True)
    return 0


# --- val --------------------------------------------------------------------------------------


def run_val(args) -> int:
    from ..data import build_classify_data, collate
    from ..engine import ClassificationTask, eval_loader, evaluate, init_distributed, shutdown
    from ..engine.checkpoints import atomic_write_json
    from ..engine.runtime import resolve_amp

    _set_threads(args.threads)
    dist = init_distributed(args.device)
    try:
        model, meta, path = _load_model_for_eval(args)
        spec = args.data or meta.get("data")
        if not spec:
            raise ValueError(f"{path}: no training data recorded in the checkpoint; pass --data")
        pre = _preprocess_for(model, meta, args.img_size)
        data = build_classify_data(spec, preprocess=pre)
        classes = _class_names(meta, model)
        if len(data.classes) != model.num_classes:
            raise ValueError(f"{path}: the model has {model.num_classes} classes, {spec} has {len(data.classes)}; "
                             "validate on the data the model was trained for")
        if meta.get("classes") and list(data.classes) != classes:
            diff = next(f"{a!r} vs {b!r}" for a, b in zip(classes, data.classes, strict=True) if a != b)
            raise ValueError(f"{path}: the model's classes differ from {spec}'s ({diff}); "
                             "validate on the data the model was trained for")
        workers = _default_workers(data) if args.workers is None else args.workers
        model.to(dist.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        loader = eval_loader(data.val, args.batch_size, workers, collate, dist)
        metrics = evaluate(model, loader, ClassificationTask(len(classes)), dist,
                           resolve_amp(args.amp, dist.device), args.channels_last, progress=True)
        if not dist.is_main:
            return 0
        out = Path(args.out) if args.out else _numbered_dir(RUNS / "val" / _safe_name(path.parent.name or "val"))
        out.mkdir(parents=True, exist_ok=True)
        result = {"top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"],
                  "epoch": meta.get("epoch"), "images_per_s": metrics["images_per_s"],
                  "images": metrics["images"], "skipped_images": metrics["skipped"],
                  "checkpoint": str(path), "data": spec}
        atomic_write_json(out / "metrics.json", result)
        names = metrics["skipped_files"]
        for name in names[:MAX_NAMED]:
            print(f"warning: skipped {name}", file=sys.stderr)
        if len(names) > MAX_NAMED:
            print(f"warning: skipped {len(names) - MAX_NAMED} more unreadable image(s), {len(names)} in all",
                  file=sys.stderr)
        print(f"{metrics['images']} images of {spec}, {metrics['images_per_s']:.0f} img/s; metrics in {out}")
        print(f"val top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}",
              flush=True)
        return 0
    finally:
        shutdown(dist)


# --- predict ----------------------------------------------------------------------------------


def run_predict(args) -> int:
    from ..data import build_transform, image_paths, open_image
    from ..engine.distributed import resolve_device

    _set_threads(args.threads)
    device = resolve_device(args.device)
    files = image_paths(args.images)
    model, meta, path = _load_model_for_eval(args)
    pre = _preprocess_for(model, meta, args.img_size)
    classes = _class_names(meta, model)
    transform = build_transform(pre, train=False)
    images = [transform(open_image(p)).as_subclass(torch.Tensor) for p in files]  # all readable first
    model = model.to(device).eval()
    fast = _fast_model(model, torch.stack(images[: args.batch_size]).to(device), args.compile)
    k = min(args.top, len(classes))
    width = max(len(c) for c in classes)
    for start in range(0, len(images), args.batch_size):
        batch = torch.stack(images[start:start + args.batch_size]).to(device)
        with torch.no_grad():
            probs = fast(batch).float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        for i in range(batch.shape[0]):
            print(files[start + i])
            for rank, (p, c) in enumerate(zip(top.values[i].tolist(), top.indices[i].tolist(), strict=True), 1):
                print(f"  {rank}. {classes[c]:<{width}}  {100 * p:6.2f}%")
    return 0


def _fast_model(model, example, compile_: bool):
    """The fastest exact form of the model for batches like ``example``."""
    from ..tools.optimize import optimize_for_inference

    return optimize_for_inference(model, example, compile=compile_, rounds=3, warmup=1)
