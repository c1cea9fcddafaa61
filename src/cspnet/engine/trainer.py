"""The training loop shared by every task: epochs of optimizer steps, evaluation, checkpoints, logs.

One process or a DDP group (see :mod:`.distributed`); ``batch_size`` is always the global batch,
split evenly over the ranks, and every world size draws the same global batches, so a run gives the
same result for any number of processes up to BatchNorm statistics (computed per rank unless
``sync_bn``) and random augmentation (seeded per rank). Rank 0 alone prints, logs and writes files.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import clip_grads_with_norm_, get_total_norm
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from ..checkpoint import atomic_write_json
from ..errors import NAME_ONLY, OptionError, first_line, printable
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, average_buffers, barrier
from .ema import ModelEMA
from .optim import (
    AUTO_SGD_FROM_STEPS,
    DEFAULT_WEIGHT_DECAY,
    auto_optimizer,
    build_optimizer,
    build_scheduler,
    check_optimizer,
    default_lr,
)
from .rundir import BEST, LAST, STATE_FILE, save_state, save_weights
from .runlog import TensorBoard, plot_curves, write_csv
from .runtime import (
    Fp32NarrowConvs,
    autocast,
    epoch_seed,
    make_grad_scaler,
    resolve_amp,
    rng_state,
    seed_everything,
    set_deterministic,
    set_rng_state,
)
from .tasks import Task

MAX_SKIP_WARNINGS = 10
# a step whose gradient norm is not finite is skipped; this many in a row end the run (fp16's
# GradScaler skips a few while it finds its scale, so the limit is not 1)
MAX_CONSECUTIVE_BAD_STEPS = 20


@dataclass
class TrainConfig:
    """Options of a training run (``lr``/``weight_decay`` None: the optimizer's default, with the
    learning rate scaled linearly from a batch of 256)."""

    epochs: int = 15
    batch_size: int = 32  # short runs on small sets need the steps (benchmarks/small_data.md)
    lr: float | None = None
    optimizer: str = "auto"  # optim.auto_optimizer: by the run's length
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_epochs: float = 1.0
    ema: bool = False
    ema_decay: float = 0.9998
    amp: str = "none"
    channels_last: bool = False
    clip_grad: float = 0.0
    seed: int = 0
    deterministic: bool = False
    sync_bn: bool = False
    workers: int = 0
    progress: bool = True

    def __post_init__(self):
        check_optimizer(self.optimizer)
        if not 0.0 < self.ema_decay < 1.0:
            raise OptionError("{ema_decay} must lie strictly between 0 and 1", ema_decay=self.ema_decay)
        if self.optimizer != "auto":
            self.for_steps(0)

    def for_steps(self, total_steps: int) -> TrainConfig:
        """Settle ``"auto"`` for a run of ``total_steps`` optimizer steps (the Trainer knows them), and
        the chosen optimizer's default rate and weight decay where none was given."""
        if self.optimizer == "auto":
            self.optimizer = auto_optimizer(total_steps)
        if self.lr is None:
            self.lr = default_lr(self.optimizer, self.batch_size)
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WEIGHT_DECAY[self.optimizer]
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def eval_loader(dataset: Dataset, batch_size: int, workers: int, collate_fn, dist: DistInfo) -> DataLoader:
    """Every rank evaluates an interleaved shard (no padding, so nothing is counted twice)."""
    if dist.enabled:
        dataset = Subset(dataset, range(dist.rank, len(dataset), dist.world_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_fn, pin_memory=dist.device.type == "cuda")


def to_device(inputs: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    inputs = inputs.to(device, non_blocking=True)
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, task: Task, dist: DistInfo, amp_dtype=None,
             channels_last: bool = False, progress: bool = False) -> dict:
    """Task metrics over the whole split (all ranks' shards), throughput, and the unreadable files:
    their number (``skipped``) and their messages (``skipped_files``, every rank's)."""
    device = dist.device
    was_training = model.training
    model.eval()
    state = task.eval_start(device)
    skipped: list[str] = []
    n = torch.zeros(1, dtype=torch.float64, device=device)
    start = time.perf_counter()
    bar = tqdm(loader, desc="val", unit="batch", leave=False, disable=not (progress and dist.is_main))
    for batch in bar:
        skipped += batch["skipped"]
        if len(batch["inputs"]) == 0:
            continue
        x = to_device(batch["inputs"], device, channels_last)
        with autocast(device, amp_dtype):
            out = model(x)
        task.eval_update(state, out, task.targets_to(batch["targets"], device))
        n += x.shape[0]
    elapsed = time.perf_counter() - start
    metrics = task.eval_finish(state, dist)
    total = float(all_reduce_sum(n, dist).item())
    metrics["images_per_s"] = total / max(elapsed, 1e-9)
    metrics["skipped_files"] = [name for names in all_gather_objects(skipped, dist) for name in names]
    metrics["skipped"] = len(metrics["skipped_files"])
    model.train(was_training)
    return metrics


class Trainer:
    """Trains ``model`` on ``train_set`` for ``cfg.epochs`` and evaluates on ``val_set`` after each.

    ``collate_fn`` must build batches ``{"inputs": tensor, "targets": ..., "skipped": [names]}``
    (``val_collate_fn``, when given, builds the validation batches: no multi-scale there);
    ``extra`` goes into every checkpoint's metadata (class names, preprocessing, ...), ``info``
    into metrics.json (model, data, ...), ``title`` onto the plot. ``left_out`` names the files the
    data left out before training, per split (``{"train": [...], "val": [...]}``, see
    :mod:`cspnet.data.scan`): warned about and counted with the ones the loaders skip.
    """

    def __init__(self, model: nn.Module, task: Task, train_set: Dataset, val_set: Dataset, collate_fn,
                 cfg: TrainConfig, dist: DistInfo | None = None, run_dir: Path | None = None,
                 extra: dict | None = None, info: dict | None = None, title: str = "",
                 log: Callable[[str], None] = print, val_collate_fn=None, left_out: dict | None = None):
        self.cfg, self.task = cfg, task
        self.dist = dist or DistInfo()
        self.device = self.dist.device
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.extra, self.info, self.title = dict(extra or {}), dict(info or {}), printable(title)
        self.log = log if self.dist.is_main else (lambda msg: None)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        if cfg.deterministic:
            set_deterministic(True)

        world = self.dist.world_size
        if cfg.batch_size % world:
            raise OptionError(f"{{batch_size}} must be a multiple of the {world} processes", batch_size=cfg.batch_size)
        per_rank = cfg.batch_size // world
        if per_rank < 2:  # BatchNorm in training needs more than one value per channel
            raise OptionError(f"{{batch_size}} leaves {per_rank} image per process; BatchNorm needs at least 2: "
                              f"use at least {2 * world}", batch_size=cfg.batch_size)
        if cfg.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                raise OptionError(
                    "{sync_bn} needs CUDA devices: torch's SyncBatchNorm has no CPU kernels; "
                    "drop it (each process then normalises over its share of the batch)", sync_bn=True,
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        bf16_cpu = self.amp_dtype is torch.bfloat16 and self.device.type == "cpu"
        self.narrow_convs = Fp32NarrowConvs(model) if bf16_cpu else None
        self.net = (DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None) if self.dist.enabled else model)

        self.generator = torch.Generator()  # the loader workers' seeds
        # one process too: rank r of N takes every N-th index of one shuffle, so step k's global
        # batch is the same index set for every N (exact 1-vs-N equality needs sync_bn)
        self.sampler = DistributedSampler(train_set, world, self.dist.rank, shuffle=True, seed=cfg.seed)
        self.train_loader = DataLoader(
            train_set, batch_size=per_rank, sampler=self.sampler, num_workers=cfg.workers,
            collate_fn=collate_fn, drop_last=True, generator=self.generator,
            pin_memory=self.device.type == "cuda",
        )
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise OptionError(
                f"the train split has {len(train_set)} images, fewer than one batch of {cfg.batch_size}; "
                "lower {batch_size}", batch_size=NAME_ONLY,
            )
        self.val_loader = eval_loader(val_set, per_rank, cfg.workers, val_collate_fn or collate_fn, self.dist)

        total = cfg.epochs * self.steps_per_epoch
        chosen = cfg.optimizer
        cfg.for_steps(total)
        if chosen == "auto":
            self.log(f"optimizer auto: {cfg.optimizer} (lr {cfg.lr:.3g}, weight decay {cfg.weight_decay:g}) for "
                     f"{total} steps; auto means adamw up to {AUTO_SGD_FROM_STEPS} steps, sgd beyond")
        self.optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        self.scheduler = build_scheduler(self.optimizer, total, round(cfg.warmup_epochs * self.steps_per_epoch))
        self.ema = ModelEMA(model, cfg.ema_decay) if cfg.ema else None
        self.scaler = make_grad_scaler(self.device, self.amp_dtype)

        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        self.best = {"value": -math.inf, "epoch": 0}
        self._warned: set[str] = set()
        self.skipped_train: set[str] = set()  # the distinct unreadable training files, every rank's
        self.left_out = {"train": [], "val": [], **(left_out or {})}
        self.skipped_steps = 0  # in the current epoch
        self._bad_in_a_row = 0
        self._warned_bad_step = False
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tensorboard = TensorBoard(self.run_dir if self.dist.is_main else None, self.log)

    # --- state --------------------------------------------------------------------------------

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self, args: dict | None = None) -> dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "history": self.history,
            "best": self.best,
            "skipped_train": sorted(self.skipped_train),
            "train_config": self.cfg.to_dict(),
            "args": args or {},
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved state: the next epoch is ``state["epoch"] + 1``."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise OptionError("the saved run has no EMA weights; resume it without {ema}", ema=NAME_ONLY)
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.skipped_train = set(state.get("skipped_train", ()))

    # --- loop ---------------------------------------------------------------------------------

    def _seed_epoch(self, epoch: int) -> None:
        seed = epoch_seed(self.cfg.seed, epoch, self.dist.rank)
        seed_everything(seed)
        self.generator.manual_seed(seed + 1)
        self.sampler.set_epoch(epoch)

    def _note_skipped(self, names: Sequence[str]) -> None:
        for name in names:
            if name in self._warned:
                continue
            self._warned.add(name)
            if len(self._warned) <= MAX_SKIP_WARNINGS:
                self.log(f"warning: skipped {name}")
            elif len(self._warned) == MAX_SKIP_WARNINGS + 1:
                self.log("warning: more unreadable images skipped; see the 'skipped' and 'val_skipped' "
                         "columns of results.csv")

    def train_one_epoch(self, epoch: int) -> dict:
        cfg, device = self.cfg, self.device
        self._seed_epoch(epoch)
        self.net.train()
        loss_sum = torch.zeros(1, dtype=torch.float64)
        seen, skipped, names = 0, 0, []
        self.skipped_steps = 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   dynamic_ncols=True, disable=not (cfg.progress and self.dist.is_main))
        start = time.perf_counter()
        for step, batch in enumerate(bar):
            self._note_skipped(batch["skipped"])
            skipped += len(batch["skipped"])
            names += batch["skipped"]
            x = to_device(batch["inputs"], device, cfg.channels_last)
            loss = self.train_step(x, self.task.targets_to(batch["targets"], device))
            loss_sum += loss.double().cpu() * x.shape[0]
            seen += x.shape[0]
            if step % 10 == 0 or step + 1 == self.steps_per_epoch:
                rate = seen * self.dist.world_size / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", lr=f"{self.lr:.3g}",
                                img_s=f"{rate:.0f}", refresh=False)
        elapsed = time.perf_counter() - start
        self.skipped_train.update(n for rank in all_gather_objects(names, self.dist) for n in rank)
        average_buffers(self.model, self.dist)
        if self.ema is not None:
            average_buffers(self.ema.module, self.dist)
        totals = all_reduce_sum(torch.tensor([loss_sum.item(), seen, skipped], dtype=torch.float64,
                                             device=device), self.dist).tolist()
        own = self.task.epoch_log()  # the task's columns (loss components, ...): averaged over the ranks
        if own:
            values = all_reduce_sum(torch.tensor(list(own.values()), dtype=torch.float64, device=device), self.dist)
            own = dict(zip(own, (values / self.dist.world_size).tolist(), strict=True))
        return {
            "train_loss": totals[0] / totals[1],
            **own,
            "lr": self.lr,
            "train_images_per_s": totals[1] / max(elapsed, 1e-9),
            "skipped": int(totals[2]),
            "skipped_steps": self.skipped_steps,  # every rank skips the same steps (same gradients)
        }

    def train_step(self, inputs: torch.Tensor, targets) -> torch.Tensor:
        """One optimizer step on a batch already on the device (forward under autocast, backward,
        clipping, step, schedule, EMA); returns the detached loss.

        A step whose gradient norm is not finite is not applied (as fp16's GradScaler does) and is
        counted in ``skipped_steps``; a non-finite loss, or too many such steps in a row, is an error.
        """
        with autocast(self.device, self.amp_dtype):
            loss = self.task.loss(self.net, inputs, targets)
        if not torch.isfinite(loss):
            raise self._diverged(f"the loss became {loss.item()} at {self._where()}")
        self.optimizer.zero_grad(set_to_none=True)
        if self._backward_step(loss) is None:
            self._bad_step(loss)
            with warnings.catch_warnings():  # torch's warning when the first step is the skipped one
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                self.scheduler.step()
        else:
            self._bad_in_a_row = 0
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
        return loss.detach()

    def _backward_step(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Backward, clip and step; the gradient norm, or None (no update) when it is not finite."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = get_total_norm([p.grad for p in params])
        finite = bool(torch.isfinite(norm))
        if finite:
            if self.cfg.clip_grad > 0:
                clip_grads_with_norm_(params, self.cfg.clip_grad, norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()  # lowers the scale after an overflow
        return norm if finite else None

    def _bad_step(self, loss: torch.Tensor) -> None:
        self.skipped_steps += 1
        self._bad_in_a_row += 1
        if self._bad_in_a_row >= MAX_CONSECUTIVE_BAD_STEPS:
            raise self._diverged(f"the gradient norm was not finite for {self._bad_in_a_row} steps in a row "
                                 f"(up to {self._where()})")
        if not self._warned_bad_step:
            self._warned_bad_step = True
            self.log(f"warning: the gradient norm was not finite at {self._where()} (loss {loss.item():.4g}); "
                     "skipped that step (no update); further ones are counted in the 'skipped_steps' column "
                     "of results.csv")

    def _where(self) -> str:
        step = self.scheduler.last_epoch - self.epoch * self.steps_per_epoch + 1
        return f"epoch {self.epoch + 1}, step {step}"

    def _diverged(self, what: str) -> OptionError:
        """``what`` went wrong, with the options that would help."""
        tips, names = ["lower {lr}"], {"lr": NAME_ONLY}
        if self.cfg.clip_grad <= 0:
            tips.append("set {clip_grad}")
            names["clip_grad"] = NAME_ONLY
        if self.amp_dtype is not None:
            tips.append("train without {amp}")
            names["amp"] = NAME_ONLY
        advice = tips[0] if len(tips) == 1 else ", ".join(tips[:-1]) + " or " + tips[-1]
        if self.cfg.clip_grad > 0:
            advice += " (gradients are already clipped at {clip_grad})"
            names["clip_grad"] = self.cfg.clip_grad
        return OptionError(what.replace("{", "{{").replace("}", "}}") + "; " + advice, **names)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def evaluate(self) -> dict:
        return evaluate(self.eval_model, self.val_loader, self.task, self.dist, self.amp_dtype,
                        self.cfg.channels_last, progress=self.cfg.progress)

    def fit(self, args: dict | None = None, callbacks: Sequence[Callable[[Trainer, dict], None]] = ()) -> dict:
        """Train the remaining epochs; returns the final metrics (also written to metrics.json).

        A run whose epochs are all done (killed before its final files) only gets metrics.json and
        results.png, from the recorded history. ``callbacks`` run after each epoch's checkpoint, as
        ``cb(trainer, row)``.
        """
        if not self.history and self.epoch >= self.cfg.epochs:
            raise ValueError(f"nothing to train: the run already completed its {self.cfg.epochs} epochs")
        main = self.task.main_metric
        self._note_skipped(self.left_out["train"] + self.left_out["val"])
        self.skipped_train.update(self.left_out["train"])
        for epoch in range(self.epoch, self.cfg.epochs):
            start = time.perf_counter()
            train = self.train_one_epoch(epoch)
            metrics = self.evaluate()
            self._note_skipped(metrics["skipped_files"])
            self.epoch = epoch + 1
            row = {"epoch": self.epoch, **train,
                   **{f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},  # scalars: the CSV
                   "epoch_s": time.perf_counter() - start}
            self.history.append(row)
            improved = metrics[main] > self.best["value"]
            if improved:
                self.best = {"value": metrics[main], "epoch": self.epoch}
            self.log(
                f"epoch {self.epoch}/{self.cfg.epochs}  loss {train['train_loss']:.4f}  "
                f"val loss {metrics['loss']:.4f}  {self.task.summary(metrics)}  "
                f"{train['train_images_per_s']:.0f} img/s" + ("  *" if improved else "")
            )
            if self.dist.is_main and self.run_dir is not None:
                self._save(metrics, improved, args)
            barrier(self.dist)
            for cb in callbacks:
                cb(self, row)
        last = self.history[-1]
        final = {k[4:]: v for k, v in last.items() if k.startswith("val_")}
        final.update({
            "epoch": self.epoch,
            "images_per_s": last["train_images_per_s"],
            "val_images_per_s": final.pop("images_per_s"),
            f"best_{main}": self.best["value"],
            "best_epoch": self.best["epoch"],
            # distinct files: each epoch meets the same bad file again (runs saved before this was
            # recorded: the most any epoch skipped)
            "skipped_images": len(self.skipped_train) or max(r.get("skipped", 0) for r in self.history),
            "val_skipped_images": final.pop("skipped", 0) + len(self.left_out["val"]),
            "skipped_steps": sum(r.get("skipped_steps", 0) for r in self.history),
            "world_size": self.dist.world_size,
            "wall_s": sum(r.get("epoch_s", 0.0) for r in self.history),  # training + evaluation, all sessions
        })
        if self.dist.is_main and self.run_dir is not None:
            # the results first: nothing drawn after them can lose them
            atomic_write_json(self.run_dir / "metrics.json", {**final, **self.info})
            try:
                plot_curves(self.run_dir / "results.png", self.history, self.task.plot_panels, self.title)
            except Exception as e:  # a figure is an extra: say why it is missing, keep the run's result
                self.log(f"warning: results.png not written ({first_line(e, 200)})")
        self.tensorboard.close()
        return final

    def _save(self, metrics: dict, improved: bool, args: dict | None) -> None:
        extra = dict(self.extra, epoch=self.epoch, task=self.task.name,
                     metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        save_weights(self.eval_model, self.run_dir / LAST, extra)
        if improved:
            save_weights(self.eval_model, self.run_dir / BEST, extra)
        write_csv(self.run_dir / "results.csv", self.history)
        self.tensorboard.log(self.history[-1], self.epoch)
        save_state(self.run_dir / STATE_FILE, self.state_dict(args))
