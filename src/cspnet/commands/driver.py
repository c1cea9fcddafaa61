"""``cspnet train``, ``cspnet val`` and ``cspnet predict`` for every task: options -> data -> task ->
engine -> report, the same steps whatever ``--task`` is; what differs per task is its recipe
(:mod:`.recipes`).

``cspnet train`` with no options trains a tiny CSP model on the built-in digits. Under
``torchrun --nproc_per_node=N -m cspnet train ...`` the same command runs DistributedDataParallel.
The engine's options are :class:`~cspnet.engine.TrainConfig`'s fields, with its defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from ..checkpoint import SUFFIXES
from ..engine.optim import BASE_LR, DEFAULT_WEIGHT_DECAY, OPTIMIZERS
from ..engine.runtime import AMP_CHOICES
from ..engine.trainer import TrainConfig
from .args import flag_for, non_negative_float, non_negative_int, positive_float, positive_int
from .recipes import RECIPES

RUNS = Path("runs")
EVAL_BATCH = 256
MAX_NAMED = 5  # unreadable files named one by one before the rest are only counted

# TrainConfig field -> its flag's argparse settings (the default is always TrainConfig's)
ENGINE_OPTIONS: dict[str, dict] = {
    "epochs": dict(type=positive_int),
    "batch_size": dict(type=positive_int, help="global batch over all processes"),
    "lr": dict(type=positive_float, help="peak learning rate (default: " + " or ".join(
        f"{lr:g} ({name})" for name, lr in BASE_LR.items()) + " x batch / 256)"),
    "optimizer": dict(choices=OPTIMIZERS),
    "momentum": dict(type=non_negative_float),
    "weight_decay": dict(type=non_negative_float, help="default " + " or ".join(
        f"{wd:g} ({name})" for name, wd in DEFAULT_WEIGHT_DECAY.items()) + "; never on biases and norm weights"),
    "warmup_epochs": dict(type=non_negative_float),
    "ema": dict(action="store_true", help="evaluate and save an EMA of the weights"),
    "ema_decay": dict(type=positive_float),
    "amp": dict(nargs="?", const="auto", choices=AMP_CHOICES,
                help="mixed precision: --amp alone means bf16 on CPU, fp16 on CUDA"),
    "channels_last": dict(action="store_true", help="NHWC memory layout"),
    "clip_grad": dict(type=non_negative_float, help="max gradient norm (0: off)"),
    "seed": dict(type=non_negative_int),
    "deterministic": dict(action="store_true", help="deterministic kernels (slower on CUDA)"),
    "sync_bn": dict(action="store_true", help="under torchrun on CUDA: BatchNorm statistics over the global batch, "
                                           "so N processes train like one (torch has no CPU SyncBatchNorm)"),
}
RUN_OPTIONS = ("workers", "progress")  # TrainConfig fields the driver sets itself (--workers, --quiet)


def _model_option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: write KEY=VALUE, e.g. fusion=none")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _add_engine_options(p) -> None:
    """One flag per engine option. Unset, a flag is None and :func:`train_config` fills in the task's
    default (``engine_defaults`` of its recipe), else TrainConfig's; the help lists both."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for field, kwargs in ENGINE_OPTIONS.items():
        kwargs, default = dict(kwargs), defaults[field]
        if kwargs.get("action") == "store_true":
            p.add_argument(flag_for(field), default=default, **kwargs)
            continue
        own = [f"{r.name} {r.engine_defaults[field]}" for r in RECIPES.values() if field in r.engine_defaults]
        if "default" not in kwargs.get("help", ""):
            said = f"default {default}" if default is not None else ""
            kwargs["help"] = "; ".join(filter(None, (kwargs.get("help"), said)))
        if own:
            kwargs["help"] += f" ({', '.join(own)})"
        p.add_argument(flag_for(field), default=None, **kwargs)


def _add_run_options(p, loader: bool = True) -> None:
    """How to run: data-loading processes (with ``loader``), device, CPU threads."""
    if loader:
        p.add_argument("--workers", type=non_negative_int, default=None,
                       help="data-loading processes per rank (default: 0 for in-memory data, else up to 8)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op CPU threads (default: torch's)")


def _add_common(p, verb: str) -> None:
    """Options every task has for ``verb``, then each recipe's own."""
    p.add_argument("--task", choices=tuple(RECIPES), default="classify", help="default classify")
    help_img = ("training resolution (default 32 for images up to 64 px, else 224)" if verb == "train" else
                "only for weights without cspnet metadata (default 224)")
    p.add_argument("--img-size", type=positive_int, default=None, help=help_img)
    for recipe in RECIPES.values():
        recipe.add_options(p, verb)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (default: a tiny CSP classifier on the built-in digits)",
                       description="Train a model. The run directory gets best/last .safetensors "
                                   "(+ .json), last.state.pt (for --resume), results.csv, results.png and "
                                   "metrics.json.")
    p.add_argument("--model", default=None, help="model name, see `cspnet list` (default: " + "; ".join(
        f"{r.name} {r.default_model}" for r in RECIPES.values()) + ")")
    p.add_argument("--data", default=None, help="; ".join(f"{r.name}: {r.data_help}" for r in RECIPES.values()))
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=None,
                   help="model input channels (default: 1 for all-grey data, else 3; images are converted)")
    p.add_argument("--set", dest="model_args", type=_model_option, action="append", default=[],
                   metavar="KEY=VALUE", help="model config override, e.g. --set fusion=none (the baseline)")
    p.add_argument("--checkpoint", default=None, help="start from these weights (.safetensors or run dir)")
    p.add_argument("--out", default=None, help="run directory (default runs/train/MODEL, numbered)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: the newest run) from its last epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(p, "train")
    _add_engine_options(p)
    _add_run_options(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("val", help="evaluate a checkpoint on a data set's validation split")
    p.add_argument("--checkpoint", default=None, help="a .safetensors file or a run directory (its best)")
    p.add_argument("--data", default=None, help="data spec (default: the one the checkpoint was trained on)")
    p.add_argument("--model", default=None, help="model name, for weights without cspnet metadata")
    p.add_argument("--out", default=None, help="run directory for metrics.json (default runs/val/NAME)")
    p.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH, help=f"default {EVAL_BATCH}")
    for field in ("amp", "channels_last"):  # the same options as for training
        default = TrainConfig.__dataclass_fields__[field].default
        p.add_argument(flag_for(field), default=default, **ENGINE_OPTIONS[field])
    _add_common(p, "val")
    _add_run_options(p)
    p.set_defaults(func=run_val)

    p = sub.add_parser("predict", help="predictions for image files (classify: top-5 classes; detect: boxes drawn)")
    p.add_argument("--checkpoint", default=None, help="a .safetensors file or a run directory (its best)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or directories (their images, sorted)")
    p.add_argument("--model", default=None, help="model name, for weights without cspnet metadata")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--out", default=None, help="detect: where the drawn images and detections.json go "
                                                "(default runs/predict/NAME, numbered)")
    p.add_argument("--compile", action="store_true",
                   help="let the inference optimizer also try torch.compile and oneDNN Graph (a one-time "
                        "cost of seconds to minutes; pays off for many images)")
    _add_common(p, "predict")
    _add_run_options(p, loader=False)
    p.set_defaults(func=run_predict)


# --- shared -----------------------------------------------------------------------------------


def _set_threads(n: int | None) -> None:
    if n is not None:
        torch.set_num_threads(n)


def _workers(args, recipe, data) -> int:
    if args.workers is not None:
        return args.workers
    return 0 if recipe.in_memory(data) else min(8, os.cpu_count() or 1)


def _numbered_dir(base: Path) -> Path:
    if not base.exists():
        return base
    k = 2
    while Path(f"{base}-{k}").exists():
        k += 1
    return Path(f"{base}-{k}")


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "run"


def _warn_skipped(names: list[str]) -> None:
    for name in names[:MAX_NAMED]:
        print(f"warning: skipped {name}", file=sys.stderr)
    if len(names) > MAX_NAMED:
        print(f"warning: skipped {len(names) - MAX_NAMED} more unreadable image(s), {len(names)} in all",
              file=sys.stderr)


# --- train ------------------------------------------------------------------------------------


def _latest_run() -> Path:
    from ..engine import STATE_FILE

    root = RUNS / "train"
    runs = [p.parent for p in root.glob(f"*/{STATE_FILE}")] if root.is_dir() else []
    if not runs:
        raise ValueError(f"--resume: no run with {STATE_FILE} under {root}; pass --out RUN_DIR")
    return max(runs, key=lambda p: (p / STATE_FILE).stat().st_mtime)


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
    from ..engine import STATE_FILE
    from ..engine.distributed import broadcast_object

    if args.out:
        run_dir = Path(args.out)
        if (run_dir / STATE_FILE).exists():
            raise ValueError(f"{run_dir} already holds a run; add --resume to continue it or pick another --out")
    else:
        run_dir = _numbered_dir(RUNS / "train" / _safe_name(args.model))
    return Path(broadcast_object(str(run_dir), dist))  # the Trainer creates it once the options are checked


def train_config(args) -> TrainConfig:
    """The engine's options from the command line (every TrainConfig field has its flag); an unset
    flag takes the task's default, else the engine's."""
    own = RECIPES[getattr(args, "task", "classify")].engine_defaults
    values = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in RUN_OPTIONS:
            given = getattr(args, f.name)
            values[f.name] = given if given is not None else own.get(f.name, f.default)
    return TrainConfig(**values, workers=args.workers, progress=not args.quiet)


def _train_parser() -> argparse.ArgumentParser:
    """``cspnet train``'s own parser, for the runs the driver starts itself (a recipe's pretraining)."""
    sub = argparse.ArgumentParser(prog="cspnet").add_subparsers()
    add_parser(sub)
    return sub.choices["train"]


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
    from ..bench.profile import count_params
    from ..checkpoint import read_metadata
    from ..engine import Trainer, resolve_checkpoint
    from ..engine.runtime import seed_everything
    from ..models import create_model, get_entry

    state = None
    if args.resume:
        args, state = _resume_args(args)
    recipe = RECIPES[getattr(args, "task", "classify")]
    args.model = args.model or recipe.default_model
    args.data = args.data or "builtin"
    get_entry(args.model)  # an unknown name fails before any data is read
    cfg = train_config(args)  # and so does a bad engine option
    for f in dataclasses.fields(TrainConfig):  # the options as resolved: what the run saves and resumes with
        if f.name not in RUN_OPTIONS and getattr(args, f.name) is None:
            setattr(args, f.name, getattr(cfg, f.name))
    in_chans = args.in_chans
    if args.checkpoint and not state:
        args.checkpoint = str(resolve_checkpoint(args.checkpoint))
        if in_chans is None:  # fine-tuning keeps the checkpoint's input channels
            in_chans = read_metadata(args.checkpoint).get("in_chans")
    data = recipe.train_data(args, in_chans)
    args.workers = _workers(args, recipe, data)
    cfg.workers = args.workers
    seed_everything(args.seed)
    model = create_model(args.model, checkpoint=args.checkpoint if not state else None, **recipe.model_kwargs(data),
                         **dict(args.model_args))
    run_dir = Path(args.out) if state else _new_run_dir(args, dist)
    where["run_dir"] = run_dir
    if state is None:
        first = recipe.pretraining(args, run_dir, dist)
        if first:  # e.g. the backbone's classification run, inside this run's directory
            _train(_train_parser().parse_args(first), dist, {})
            seed_everything(args.seed)
        recipe.prepare_model(args, model)
    saved_args = {k: v for k, v in vars(args).items() if k != "func"}
    params = count_params(model)[0]
    trainer = Trainer(
        model, recipe.task(args, data, model), data.train, data.val, recipe.train_collate(args, data, model), cfg,
        dist, run_dir, val_collate_fn=recipe.collate,
        extra=recipe.checkpoint_extra(args, data),
        info={"model": args.model, "data": args.data, "params": params, "run_dir": str(run_dir)},
        title=f"{args.model} on {args.data}",
    )
    if state is not None:
        trainer.load_state_dict(state)
    if dist.is_main:
        what = f"resuming at epoch {trainer.epoch + 1}" if state else "training"
        if trainer.epoch >= trainer.cfg.epochs:
            what = f"finishing (all {trainer.epoch} epochs done; writing metrics.json and results.png)"
        shape, holds = recipe.summary(data)
        print(f"{what}: {args.model} ({params / 1e6:.3f} M params, {shape}) on {args.data}: {holds}; "
              f"{dist.world_size} process(es) on {dist.device}; run dir {run_dir}", flush=True)
    final = trainer.fit(saved_args)
    if dist.is_main:
        recipe.after_fit(trainer, data, run_dir)
        first, *rest = recipe.final_lines(final, run_dir)
        print(f"{trainer.epoch} epochs in {final['wall_s']:.0f} s; {first}")
        for line in rest:
            print(line, flush=True)
    return 0


# --- val --------------------------------------------------------------------------------------


def run_val(args) -> int:
    from ..checkpoint import atomic_write_json
    from ..engine import eval_loader, evaluate, init_distributed, shutdown
    from ..engine.runtime import resolve_amp

    recipe = RECIPES[args.task]
    _set_threads(args.threads)
    dist = init_distributed(args.device)
    try:
        model, meta, path = recipe.eval_model(args)
        spec = args.data or meta.get("data")
        if not spec:
            raise ValueError(f"{path}: no training data recorded in the checkpoint; pass --data")
        data = recipe.eval_data(args, spec, model, meta, path)
        model.to(dist.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        loader = eval_loader(data.val, args.batch_size, _workers(args, recipe, data), recipe.collate, dist)
        task = recipe.eval_task(data, model)
        metrics = evaluate(model, loader, task, dist, resolve_amp(args.amp, dist.device), args.channels_last,
                           progress=True)
        if not dist.is_main:
            return 0
        name = path.parent.name if path.suffix in SUFFIXES else path.stem  # a run's name, a cfg's or a model's
        out = Path(args.out) if args.out else _numbered_dir(RUNS / "val" / _safe_name(name or "val"))
        out.mkdir(parents=True, exist_ok=True)
        result = {**recipe.val_metrics(metrics), "epoch": meta.get("epoch"), "images_per_s": metrics["images_per_s"],
                  "images": metrics["images"], "skipped_images": metrics["skipped"],
                  "checkpoint": str(path), "data": spec}
        recipe.write_val_files(out, task, metrics)
        atomic_write_json(out / "metrics.json", result)
        _warn_skipped(metrics["skipped_files"])
        print(f"{metrics['images']} images of {spec}, {metrics['images_per_s']:.0f} img/s; metrics in {out}")
        print(recipe.val_line(metrics), flush=True)
        return 0
    finally:
        shutdown(dist)


# --- predict ----------------------------------------------------------------------------------


def run_predict(args) -> int:
    from ..engine.distributed import resolve_device
    from ..inference import optimize_for_inference

    recipe = RECIPES[args.task]
    _set_threads(args.threads)
    device = resolve_device(args.device)
    files = recipe.files(args.images)
    model, meta, _ = recipe.eval_model(args)

    def optimize(module, example):
        """The fastest exact form of the model for batches like ``example``."""
        return optimize_for_inference(module, example, compile=args.compile, rounds=3, warmup=1)

    recipe.predict(args, model, meta, files, device, optimize)
    return 0
