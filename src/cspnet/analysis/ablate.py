"""The paper's Table 1 as a procedure: train a family's baseline and its CSP variants (partial ratio
gamma x fusion) with one recipe, budget and set of seeds, then report cost and accuracy side by side.

Every run is an ordinary ``cspnet train`` run (the command hands in the training driver) in its own directory
``OUT/runs/VARIANT/seedK``; a run is finished when its ``metrics.json`` exists, an unfinished one
with ``last.state.pt`` is resumed, any other is started again. So an interrupted ablation loses at
most the epoch in progress, and re-running a finished one trains nothing and only rewrites the
report (:mod:`.ablate_report`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..bench.runner import PAIRS
from ..errors import OptionError

# --family -> the baseline model; its CSP model is the baseline's partner in the paper's pairs
FAMILIES = {"peleenet": "peleenet", "resnet": "resnet50", "resnext": "resnext50", "darknet": "darknet53",
            "densenet": "densenet201"}
FUSIONS = ("first", "last", "full")
DEFAULT_GAMMAS = (0.25, 0.5, 0.75)
PLAN_FILE = "ablation.json"
METRICS = "metrics.json"


def csp_model(family: str) -> str:
    return dict(PAIRS)[FAMILIES[family]]


@dataclass(frozen=True)
class Variant:
    """One column of the ablation: a model plus the overrides that make it (none for the baseline)."""

    key: str  # its run directory's name
    model: str
    gamma: float | None = None
    fusion: str = "none"

    @property
    def is_baseline(self) -> bool:
        return self.fusion == "none"

    @property
    def overrides(self) -> dict:
        return {} if self.is_baseline else {"gamma": self.gamma, "fusion": self.fusion}

    @property
    def label(self) -> str:
        return f"{self.model} (baseline)" if self.is_baseline else f"{self.fusion}, gamma {self.gamma:g}"


@dataclass(frozen=True)
class Recipe:
    """What every run of an ablation shares; a second invocation on the same OUT must match it."""

    family: str
    data: str = "builtin"
    epochs: int | None = None
    img_size: int | None = None
    width_mult: float = 1.0
    depth_mult: float = 1.0
    batch_size: int | None = None
    warmup_epochs: float | None = None


@dataclass
class Run:
    variant: Variant
    seed: int
    run_dir: Path
    metrics: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return (self.run_dir / METRICS).is_file()


def parse_gammas(text: str) -> tuple[float, ...]:
    """``0.25,0.5`` -> (0.25, 0.5); each a number in (0, 1), the share of channels that bypass the blocks."""
    out = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise OptionError(f"{{gammas}}: {part.strip()!r} is not a number; give values in (0, 1), "
                              "e.g. 0.25,0.5,0.75", gammas=text) from None
        if not 0 < value < 1:
            raise OptionError(f"{{gammas}}: {value:g} is outside (0, 1); gamma is the share of channels that "
                              "bypass the blocks, e.g. 0.25,0.5,0.75", gammas=text)
        out.append(value)
    return tuple(dict.fromkeys(out))


def parse_fusions(text: str) -> tuple[str, ...]:
    out = [part.strip() for part in text.split(",")]
    for part in out:
        if part not in FUSIONS:
            raise OptionError(f"{{fusions}}: unknown fusion {part!r}; allowed: {', '.join(FUSIONS)}", fusions=text)
    return tuple(dict.fromkeys(out))


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise OptionError(f"{{family}} is unknown; allowed: {', '.join(FAMILIES)}", family=family)
    return family


def plan_variants(family: str, gammas: Sequence[float], fusions: Sequence[str]) -> list[Variant]:
    """The baseline, then every fusion x gamma (the paper's Table 1 order: fusion first, last, full)."""
    csp = csp_model(check_family(family))
    variants = [Variant(FAMILIES[family], FAMILIES[family])]
    for fusion in fusions:
        for gamma in gammas:
            variants.append(Variant(f"{csp}-{fusion}-g{gamma:g}", csp, gamma, fusion))
    return variants


def check_buildable(variants: Sequence[Variant], recipe: Recipe, num_classes: int = 10, in_chans: int = 1) -> None:
    """Build every variant at the recipe's size before any training, so a width that rounds a stage
    away, or a gamma x fusion the model cannot take, fails at once with one line naming the option."""
    from ..models import create_model

    scale = {"width_mult": recipe.width_mult, "depth_mult": recipe.depth_mult}
    for v in variants:
        try:
            create_model(v.model, num_classes=num_classes, in_chans=in_chans, **scale)
        except ValueError as e:
            named = {k: x for k, x in scale.items() if x != 1} or scale
            raise OptionError(" ".join(f"{{{k}}}" for k in named) + f": {v.model} cannot be built at this size: {e}",
                              **named) from None
        if v.is_baseline:
            continue
        try:
            create_model(v.model, num_classes=num_classes, in_chans=in_chans, **scale, **v.overrides)
        except ValueError as e:
            raise OptionError(f"{{gammas}} {{fusions}}: {v.model} with gamma={v.gamma:g}, fusion={v.fusion!r} "
                              f"cannot be built: {e}; leave that pair out", gammas=v.gamma, fusions=v.fusion) from None


def plan_runs(out: Path, variants: Sequence[Variant], seeds: int) -> list[Run]:
    """Seed by seed, so that an ablation stopped early has every variant at its first seeds."""
    return [Run(v, seed, out / "runs" / v.key / f"seed{seed}") for seed in range(seeds) for v in variants]


def finished_runs(out: Path, recipe: Recipe, variants: Sequence[Variant], seeds: int) -> tuple[list[Run], str]:
    """The runs finished so far with their metrics, and a line saying what is missing (for a
    partial report while the ablation still runs, or after it was stopped)."""
    if not (out / PLAN_FILE).is_file():
        raise OptionError("{out} holds no ablation yet (no " + PLAN_FILE + ")", out=str(out))
    check_recipe(out, recipe)
    runs = plan_runs(out, variants, seeds)
    done = [r for r in runs if r.finished]
    if not any(r.variant == variants[0] for r in done):
        raise OptionError("{out}: no baseline run has finished yet; nothing to compare against", out=str(out))
    for r in done:
        r.metrics = json.loads((r.run_dir / METRICS).read_text())
    missing = [f"{r.variant.key} seed {r.seed}" for r in runs if not r.finished]
    note = (f"{len(done)} of {len(runs)} runs finished; missing: {', '.join(missing)}" if missing else "")
    return done, note


def check_recipe(out: Path, recipe: Recipe) -> None:
    """Write the recipe into OUT, or check it against the one there: runs trained another way
    would not be comparable with new ones."""
    from ..checkpoint import atomic_write_json

    path = out / PLAN_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        for name, value in asdict(recipe).items():
            if saved.get(name) != value:
                raise OptionError(f"{{out}} holds an ablation with {name}={saved.get(name)!r}, not {value!r}; "
                                  "use the same options to continue it, or another --out", out=str(out))
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, asdict(recipe))


def train_argv(run: Run, recipe: Recipe, threads: int | None, device: str, quiet: bool) -> list[str]:
    """``cspnet train`` arguments for a run: a fresh one, or ``--resume`` of one with saved state."""
    from ..engine import STATE_FILE

    how = [*(["--threads", str(threads)] if threads else []), "--device", device, *(["--quiet"] if quiet else [])]
    if (run.run_dir / STATE_FILE).is_file():
        return ["--resume", "--out", str(run.run_dir), *how]
    argv = ["--model", run.variant.model, "--data", recipe.data, "--seed", str(run.seed), "--out", str(run.run_dir)]
    for flag, value in (("--epochs", recipe.epochs), ("--img-size", recipe.img_size),
                        ("--batch-size", recipe.batch_size), ("--warmup-epochs", recipe.warmup_epochs)):
        if value is not None:
            argv += [flag, str(value)]
    sets = {**run.variant.overrides, "width_mult": recipe.width_mult, "depth_mult": recipe.depth_mult}
    for key, value in sets.items():
        if key in ("width_mult", "depth_mult") and value == 1:
            continue
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv + how


def run_ablation(out: Path, recipe: Recipe, variants: Sequence[Variant], seeds: int, threads: int | None = None,
                 device: str = "cpu", quiet: bool = False,
                 *, train: Callable[[list[str]], int]) -> tuple[list[Run], int]:
    """Train every unfinished run (resuming those with saved state) with ``train(argv)``, which
    runs ``cspnet train ARGV`` (the command passes the training driver); returns all runs with
    their metrics and how many were trained in this call."""
    check_recipe(out, recipe)
    runs = plan_runs(out, variants, seeds)
    todo = [r for r in runs if not r.finished]
    if todo:
        print(f"ablation: {len(runs) - len(todo)} of {len(runs)} runs finished; training {len(todo)} in {out}",
              file=sys.stderr, flush=True)
    bar = tqdm(todo, desc="ablate", unit="run", disable=quiet or not todo)
    for run in bar:
        bar.set_postfix_str(f"{run.variant.key} seed {run.seed}")
        status = train(train_argv(run, recipe, threads, device, quiet))
        if status or not run.finished:
            raise ValueError(f"the run in {run.run_dir} ended without {METRICS} (status {status})")
    bar.close()
    for run in runs:
        run.metrics = json.loads((run.run_dir / METRICS).read_text())
    return runs, len(todo)
