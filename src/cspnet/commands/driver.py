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
from ..engine.optim import AUTO_SGD_FROM_STEPS, BASE_LR, DEFAULT_WEIGHT_DECAY, LR_SCALING, OPTIMIZERS
from ..engine.runtime import AMP_CHOICES
from ..engine.trainer import TrainConfig
from ..errors import printable
from .args import IMG_SIZE_HELP, MAX_COUNT, flag_for, img_size, number, whole
from .recipes import RECIPES

RUNS = Path("runs")
EVAL_BATCH = 256
MAX_NAMED = 5  # unreadable files named one by one before the rest are only counted
MAX_BATCH = 65_536
# a training batch of 1 leaves BatchNorm one value per channel on a model's last maps
train_batch = whole(2, MAX_BATCH, ": BatchNorm needs at least 2 images per batch to normalise over")
eval_batch = whole(1, MAX_BATCH)
LR = number(0, 10, low_open=True, why=": a higher peak rate only diverges")

# TrainConfig field -> its flag's argparse settings (the default is always TrainConfig's)
ENGINE_OPTIONS: dict[str, dict] = {
    "epochs": dict(type=whole(1, MAX_COUNT)),
    "batch_size": dict(type=train_batch, help=f"global batch over all processes, 2..{MAX_BATCH}"),
    "lr": dict(type=LR, help="peak learning rate (default: " + " or ".join(
        f"{lr:g} x {'sqrt(batch / 256)' if LR_SCALING[name] == 'sqrt' else 'batch / 256'} ({name})"
        for name, lr in BASE_LR.items()) + ")"),
    "optimizer": dict(choices=OPTIMIZERS, help=f"auto: adamw for runs of up to {AUTO_SGD_FROM_STEPS} optimizer "
                      "steps (epochs x images / batch), sgd for longer ones"),
    "momentum": dict(type=number(0, 1, high_open=True, why=": the share of the last update kept")),
    "weight_decay": dict(type=number(0, 1, high_open=True, why=": the share of a weight decayed per unit of rate"),
                         help="0 to 1; default " + " or ".join(
        f"{wd:g} ({name})" for name, wd in DEFAULT_WEIGHT_DECAY.items()) + "; never on biases and norm weights"),
    "warmup_epochs": dict(type=number(0, MAX_COUNT)),
    "ema": dict(action="store_true", help="evaluate and save an EMA of the weights"),
    "ema_decay": dict(type=number(0, 1, low_open=True, high_open=True)),
    "amp": dict(nargs="?", const="auto", choices=AMP_CHOICES,
                help="mixed precision: --amp alone means bf16 on CPU, fp16 on CUDA"),
    "channels_last": dict(action="store_true", help="NHWC memory layout"),
    "clip_grad": dict(type=number(0, 1e6), help="max gradient norm (0: off)"),
    "seed": dict(type=whole(0, 2**32 - 1), help="0 to 2^32-1 (numpy's seed range)"),
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
        p.add_argument("--workers", type=whole(0, 256), default=None,
                       help="data-loading processes per rank (default: 0 for in-memory data, else up to 8)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=whole(1, 4096), default=None, help="intra-op CPU threads (default: torch's)")


def _add_common(p, verb: str) -> None:
    """Options every task has for ``verb``, then each recipe's own."""
    p.add_argument("--task", choices=tuple(RECIPES), default="classify", help="default classify")
    help_img = ("training resolution (default 32 for images up to 64 px, else 224)" if verb == "train" else
                "only for weights without cspnet metadata (default 224)")
    p.add_argument("--img-size", type=img_size, default=None, help=f"{help_img}; {IMG_SIZE_HELP}")
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
    p.add_argument("--batch-size", type=eval_batch, default=EVAL_BATCH, help=f"default {EVAL_BATCH}")
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
    p.add_argument("--batch-size", type=eval_batch, default=32)
    p.add_argument("--out", default=None, help="detect: where the drawn images and detections.json go "
                                                "(default runs/predict/NAME, numbered)")
    p.add_argument("--compile", action="store_true",
                   help="let the inference optimizer also try torch.compile, oneDNN Graph and, when installed, "
                        "ONNX Runtime and OpenVINO (a one-time cost of seconds to minutes; pays off for many "
                        "images)")
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


def _writable_dir(path: Path, flag: str) -> None:
    """``path`` as a directory (made if missing), or a one-line error naming ``flag``."""
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(f"{flag} {printable(path)}: {printable(blocker)} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{flag} {printable(path)}: cannot create the directory ({e.strerror})") from None


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


def _changed_options(args, state: dict) -> list[str]:
    """The options given on this command line that differ from the resumed run's own: a resumed run
    keeps its schedule (epochs, rate, ...), so that it ends as the uninterrupted run would have."""
    changed = []
    for field in (*ENGINE_OPTIONS, "img_size"):
        given, own = getattr(args, field, None), state["args"].get(field)
        resolved = state.get("train_config", {}).get(field, own)  # e.g. the rate an unset --lr came to
        own = own if own is not None else resolved
        if ENGINE_OPTIONS.get(field, {}).get("action") == "store_true":
            given = given or None  # an absent flag says nothing
        if given is not None and given not in (own, resolved):
            shown = "" if isinstance(given, bool) else f" {given:g}" if isinstance(given, float) else f" {given}"
            was = ("off" if own is False else "on" if own is True else f"{own:g}" if isinstance(own, float)
                   else own)
            changed.append(f"{flag_for(field)}{shown} (the run's: {was})")
    return changed


def _resume_args(args, dist, where: dict):
    """The saved options of the run to resume (its model and data win over the command line); the
    run directory is held (``where["claim"]``) before its state is read."""
    from ..engine import STATE_FILE, load_state
    from ..engine.rundir import claim_run_dir

    run_dir = Path(args.out) if args.out else _latest_run()
    if not run_dir.is_dir():
        raise ValueError(f"--resume: {printable(run_dir)} is not a run directory")
    if dist.is_main:
        where["claim"] = claim_run_dir(run_dir)
    state = load_state(run_dir / STATE_FILE)
    saved = {**vars(args), **state["args"]}  # options newer than the run keep this command's values
    if args.model is not None and args.model != saved["model"]:
        raise ValueError(
            f"--resume: {printable(run_dir)} trains model {saved['model']!r}, not {args.model!r}; "
            "drop --model or choose another --out"
        )
    if args.data is not None and args.data != saved["data"]:
        raise ValueError(f"--resume: {printable(run_dir)} trains on {printable(saved['data'])!r}, not "
                         f"{printable(args.data)!r}; drop --data")
    changed = _changed_options(args, state)
    if changed:
        raise ValueError(f"--resume continues {printable(run_dir)} with its own options, and {', '.join(changed)} "
                         "would change them; drop " + ("it" if len(changed) == 1 else "them")
                         + " (or start a new run with another --out)")
    for key in ("quiet", "threads", "device"):  # how to run; loader workers stay: they draw the augmentation
        saved[key] = getattr(args, key)
    saved.update(out=str(run_dir), resume=True)
    return type(args)(**saved), state


def _new_run_dir(args, dist, where: dict) -> Path:
    """The run directory, claimed by rank 0 for the whole run (``where["claim"]``): ``--out`` held by
    another run, or holding a finished one, is refused; a numbered default is created exclusively,
    so runs started together get a number each."""
    from ..engine import STATE_FILE
    from ..engine.distributed import broadcast_object
    from ..engine.rundir import claim_run_dir

    run_dir = None
    if dist.is_main:
        if args.out:
            run_dir = Path(args.out)
            where["claim"] = claim_run_dir(run_dir)
            if (run_dir / STATE_FILE).exists():
                raise ValueError(f"{printable(run_dir)} already holds a run; add --resume to continue it or pick "
                                 "another --out")
        else:
            base = RUNS / "train" / _safe_name(args.model)
            while True:
                run_dir = _numbered_dir(base)
                try:
                    where["claim"] = claim_run_dir(run_dir, exclusive_create=True)
                    break
                except FileExistsError:  # another run took this number first
                    continue
    return Path(broadcast_object(str(run_dir), dist))


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
        return _train_holding(args, dist, where)
    except KeyboardInterrupt:
        if dist.is_main and "run_dir" in where:
            print(f"interrupted; continue with: cspnet train --resume --out {printable(where['run_dir'])}",
                  file=sys.stderr)
        raise
    finally:
        shutdown(dist)


def _train_holding(args, dist, where: dict) -> int:
    """:func:`_train`, letting its run directory go at the end (what a failed run made, it removes)."""
    failed = True
    try:
        rc = _train(args, dist, where)
        failed = False
        return rc
    finally:
        if "claim" in where:
            where.pop("claim").release(failed=failed)


def _train(args, dist, where: dict) -> int:
    from ..bench.profile import count_params
    from ..checkpoint import read_checkpoint
    from ..engine import Trainer, resolve_checkpoint
    from ..engine.runtime import seed_everything
    from ..models import create_model, get_entry

    state = None
    if args.data is not None and not args.data.strip():
        raise ValueError("--data is empty; give a data spec, or drop --data for the built-in digits")
    if args.resume:
        args, state = _resume_args(args, dist, where)
    recipe = RECIPES[getattr(args, "task", "classify")]
    args.model = args.model or recipe.default_model
    args.data = args.data or "builtin"
    get_entry(args.model)  # an unknown name fails before any data is read
    cfg = train_config(args)  # and so does a bad engine option
    for f in dataclasses.fields(TrainConfig):  # the options as resolved: what the run saves and resumes with
        if f.name not in RUN_OPTIONS and getattr(args, f.name) is None:
            setattr(args, f.name, getattr(cfg, f.name))
    in_chans = args.in_chans
    start = None  # the weights to start from, read once: their channels and their tensors are one version
    if args.checkpoint and not state:
        args.checkpoint = str(resolve_checkpoint(args.checkpoint))
        start = read_checkpoint(args.checkpoint)
        if in_chans is None:  # fine-tuning keeps the checkpoint's input channels
            in_chans = start.meta.get("in_chans")
    data = recipe.train_data(args, in_chans)
    args.workers = _workers(args, recipe, data)
    cfg.workers = args.workers
    seed_everything(args.seed)
    model = create_model(args.model, checkpoint=start, **recipe.model_kwargs(data), **dict(args.model_args))
    run_dir = Path(args.out) if state else _new_run_dir(args, dist, where)
    where["run_dir"] = run_dir
    if state is None:
        first = recipe.pretraining(args, run_dir, dist)
        if first:  # e.g. the backbone's classification run, inside this run's directory
            _train_holding(_train_parser().parse_args(first), dist, {})
            seed_everything(args.seed)
        recipe.prepare_model(args, model)
    saved_args = {k: v for k, v in vars(args).items() if k != "func"}
    params = count_params(model)[0]
    trainer = Trainer(
        model, recipe.task(args, data, model), data.train, data.val, recipe.train_collate(args, data, model), cfg,
        dist, run_dir, val_collate_fn=recipe.collate,
        extra=recipe.checkpoint_extra(args, data),
        info={"model": args.model, "data": args.data, "params": params, "run_dir": str(run_dir)},
        title=f"{args.model} on {args.data}", left_out=getattr(data, "unreadable", None),
    )
    if state is not None:
        trainer.load_state_dict(state)
    if dist.is_main:
        what = f"resuming at epoch {trainer.epoch + 1}" if state else "training"
        if trainer.epoch >= trainer.cfg.epochs:
            what = f"finishing (all {trainer.epoch} epochs done; writing metrics.json and results.png)"
        shape, holds = recipe.summary(data)
        print(f"{what}: {args.model} ({params / 1e6:.3f} M params, {shape}) on {printable(args.data)}: {holds}; "
              f"{dist.world_size} process(es) on {dist.device}; run dir {printable(run_dir)}", flush=True)
    final = trainer.fit(saved_args)
    if dist.is_main:
        recipe.after_fit(trainer, data, run_dir)
        first, *rest = recipe.final_lines(final, run_dir)
        print(f"{trainer.epoch} epochs in {final['wall_s']:.0f} s; {printable(first)}")
        for line in rest:
            print(printable(line), flush=True)
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
        if args.data is not None and not args.data.strip():
            raise ValueError("--data is empty; give a data spec, or drop --data for the checkpoint's own data")
        if dist.is_main and args.out:
            _writable_dir(Path(args.out), "--out")  # before the evaluation, not after it
        model, meta, path = recipe.eval_model(args)
        spec = args.data or meta.get("data")
        if not spec:
            raise ValueError(f"{printable(path)}: no training data recorded in the checkpoint; pass --data")
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
        skipped = getattr(data, "unreadable", {}).get("val", []) + metrics["skipped_files"]  # before, and by the loader
        name = path.parent.name if path.suffix in SUFFIXES else path.stem  # a run's name, a cfg's or a model's
        out = Path(args.out) if args.out else _numbered_dir(RUNS / "val" / _safe_name(name or "val"))
        _writable_dir(out, "--out")
        result = {**recipe.val_metrics(metrics), "epoch": meta.get("epoch"), "images_per_s": metrics["images_per_s"],
                  "images": metrics["images"], "skipped_images": len(skipped),
                  "checkpoint": str(path), "data": spec}
        recipe.write_val_files(out, task, metrics)
        atomic_write_json(out / "metrics.json", result)
        _warn_skipped(skipped)
        print(f"{metrics['images']} images of {printable(spec)}, {metrics['images_per_s']:.0f} img/s; "
              f"metrics in {printable(out)}")
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
        # the peer engines (an ONNX export first) are one-time costs too: only with --compile
        return optimize_for_inference(module, example, compile=args.compile, runtimes=args.compile, rounds=3,
                                      warmup=1)

    recipe.predict(args, model, meta, files, device, optimize)
    return 0
