"""``--task classify``: image classification on the shared driver (ImageFolder, CIFAR batches,
torchvision sets on disk, the built-in digits; top-1/top-5; top-k predictions)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ...data import build_classify_data, build_transform, collate, image_paths, preprocess_spec
from ...data.images import read_images
from ...data.sources import TensorImages
from ...engine import ClassificationTask
from ...engine.optim import AUTO_SGD_FROM_STEPS, short_run
from ...engine.rundir import BEST, LAST
from ...models.spec import input_channels
from ..args import PROBABILITY, number, positive_int
from ..loading import load_checkpoint_model

LABEL_SMOOTHING = 0.1


class ClassifyRecipe:
    name = "classify"
    engine_defaults: dict = {}  # TrainConfig's own
    default_model = "cspresnext_tiny"
    collate = staticmethod(collate)
    data_help = ("builtin (default), an ImageFolder dir with train/ and val/, a CIFAR python-batches dir, "
                 "or torchvision:NAME:ROOT")

    def add_options(self, p, verb: str) -> None:
        if verb == "train":
            p.add_argument("--label-smoothing", type=number(0, 1, high_open=True), default=None,
                           help=f"default {LABEL_SMOOTHING} (detect: 0, darknet's)")
            p.add_argument("--hflip", type=PROBABILITY, default=None,
                           help="horizontal-flip probability, 0 to 1 "
                                "(default 0.5; 0 for the digits, classify and detect)")
            p.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None,
                           help="random crops in training (default: off for short runs, up to "
                                f"{AUTO_SGD_FROM_STEPS} optimizer steps, where they slow fitting; on for longer ones)")
        if verb == "predict":
            p.add_argument("--top", type=positive_int, default=5, help="how many classes to show (default 5)")

    # --- train --------------------------------------------------------------------------------

    def train_data(self, args, in_chans: int | None):
        def crop(train_images: int) -> bool:  # "auto": as the optimizer, by the run's length
            return not short_run(args.epochs * (train_images // args.batch_size))

        return build_classify_data(args.data, args.img_size, in_chans, args.hflip,
                                   crop=crop if args.crop is None else args.crop)

    def in_memory(self, data) -> bool:
        """Whether the images are tensors already (no loader processes needed to decode them)."""
        return isinstance(data.train.source, TensorImages)

    def model_kwargs(self, data) -> dict:
        return {"num_classes": len(data.classes), "in_chans": data.in_chans}

    def task(self, args, data, model) -> ClassificationTask:
        smoothing = LABEL_SMOOTHING if args.label_smoothing is None else args.label_smoothing
        return ClassificationTask(len(data.classes), smoothing)

    def train_collate(self, args, data, model):
        return collate

    def pretraining(self, args, run_dir: Path, dist) -> None:
        """None: a classifier has no separate backbone to pretrain."""

    def prepare_model(self, args, model) -> None:
        """Nothing: ``--checkpoint`` has loaded the whole model."""

    def after_fit(self, trainer, data, run_dir: Path) -> None:
        """Nothing beyond the engine's files."""

    def checkpoint_extra(self, args, data) -> dict:
        return {"classes": data.classes, "preprocess": data.preprocess, "data": args.data}

    def summary(self, data) -> tuple[str, str]:
        """(the input shape, what the data holds) for the line a run starts with."""
        pre = data.preprocess
        return (f"{pre['in_chans']}x{pre['img_size']}x{pre['img_size']}",
                f"{len(data.train)} train / {len(data.val)} val images, {len(data.classes)} classes")

    def final_lines(self, final: dict, run_dir: Path) -> list[str]:
        return [f"best top-1 {final['best_top1']:.2f}% at epoch {final['best_epoch']} ({run_dir / BEST})",
                f"val top-1 {final['top1']:.2f}%  top-5 {final['top5']:.2f}%  "
                f"(epoch {final['epoch']}, {run_dir / LAST})"]

    # --- val ----------------------------------------------------------------------------------

    def eval_model(self, args):
        return load_checkpoint_model(args)

    def eval_data(self, args, spec: str, model, meta: dict, path: Path):
        data = build_classify_data(spec, preprocess=self.preprocess_for(model, meta, args.img_size), train_split=False)
        classes = self.class_names(meta, model)
        if len(data.classes) != model.num_classes:
            raise ValueError(f"{path}: the model has {model.num_classes} classes, {spec} has {len(data.classes)}; "
                             "validate on the data the model was trained for")
        if meta.get("classes") and list(data.classes) != classes:
            diff = next(f"{a!r} vs {b!r}" for a, b in zip(classes, data.classes, strict=True) if a != b)
            raise ValueError(f"{path}: the model's classes differ from {spec}'s ({diff}); "
                             "validate on the data the model was trained for")
        return data

    def eval_task(self, data, model) -> ClassificationTask:
        return ClassificationTask(len(data.classes))

    def write_val_files(self, out: Path, task, metrics: dict) -> None:
        """Nothing besides metrics.json."""

    def val_metrics(self, metrics: dict) -> dict:
        return {"top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"]}

    def val_line(self, metrics: dict) -> str:
        return f"val top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}"

    # --- predict ------------------------------------------------------------------------------

    def predict(self, args, model, meta: dict, files: list[str], device, optimize) -> None:
        """Top-k classes of every file, printed under its name; every file is read (an unreadable
        one skipped with a warning) before the model runs."""
        pre = self.preprocess_for(model, meta, args.img_size)
        classes = self.class_names(meta, model)
        transform = build_transform(pre, train=False)
        files, images = read_images(files, lambda img: transform(img).as_subclass(torch.Tensor))
        model = model.to(device).eval()
        fast = optimize(model, torch.stack(images[: args.batch_size]).to(device))
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

    def files(self, items: list[str]) -> list[str]:
        return image_paths(items)

    # --- shared -------------------------------------------------------------------------------

    @staticmethod
    def preprocess_for(model, meta: dict, img_size: int | None) -> dict:
        """The checkpoint's preprocessing (at ``img_size`` when given), or a photo default."""
        pre = meta.get("preprocess")
        if pre is None:
            return preprocess_spec(img_size or 224, input_channels(model), small=False)
        return dict(pre, img_size=img_size) if img_size is not None else pre

    @staticmethod
    def class_names(meta: dict, model) -> list[str]:
        classes = meta.get("classes")
        return list(classes) if classes else [str(i) for i in range(model.num_classes)]
