"""The training and evaluation engine shared by tasks: a task supplies its loss and metrics
(:mod:`.tasks`); the engine supplies the loop, optimizers, warm-up + cosine schedule, EMA, AMP,
channels-last, gradient clipping, seeding, atomic checkpoints with exact resume, CSV/PNG/TensorBoard
logs and DistributedDataParallel under torchrun."""

from .distributed import DistInfo, init_distributed, shutdown
from .ema import ModelEMA
from .optim import WarmupCosine, build_optimizer, build_scheduler
from .rundir import STATE_FILE, load_state, resolve_checkpoint, save_weights
from .tasks import ClassificationTask, Task
from .trainer import TrainConfig, Trainer, eval_loader, evaluate

__all__ = [
    "STATE_FILE",
    "ClassificationTask",
    "DistInfo",
    "ModelEMA",
    "Task",
    "TrainConfig",
    "Trainer",
    "WarmupCosine",
    "build_optimizer",
    "build_scheduler",
    "eval_loader",
    "evaluate",
    "init_distributed",
    "load_state",
    "resolve_checkpoint",
    "save_weights",
    "shutdown",
]
