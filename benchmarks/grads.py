"""The paper's duplicated-gradient argument (Section 3.1), measured with ``cspnet grads``; writes
benchmarks/grads.md and the heat maps under benchmarks/grads/.

Two pairs, peleenet vs csppeleenet and densenet201 vs cspdensenet201, each measured at
initialisation and after a brief training run (``cspnet train``, one epoch) on Fashion-MNIST
(../shared/data/classify/fashion_mnist: 2,500 train / 500 val real 28x28 images, upscaled).

    nice -n 5 python benchmarks/grads.py > grads.log 2>&1      # about 20 minutes on 2 busy cores

Every step's output is kept (the training runs under runs/bench_grads/, the measurements under
benchmarks/grads/); a rerun skips what is done, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cspnet.bench.child import machine_info
from cspnet.checkpoint import atomic_write_bytes
from cspnet.cli import main
from cspnet.commands.grads import write_heatmaps

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data" / "classify" / "fashion_mnist"
RUNS = ROOT / "runs" / "bench_grads"
OUT = HERE / "grads"
PAIRS = (("peleenet", "csppeleenet"), ("densenet201", "cspdensenet201"))
IMG, BATCH, BATCHES, SEED = 32, 16, 6, 0
TRAIN = ["--epochs", "1", "--warmup-epochs", "0.2", "--batch-size", "64"]
# images per class of the training run, per pair (None: all 250): densenet201's epoch is the costly one
PER_CLASS = {"peleenet": None, "densenet201": 100}
VAL_PER_CLASS = {"peleenet": None, "densenet201": 20}


def subset(per_class: int, val_per_class: int) -> Path:
    """The first ``per_class`` training and ``val_per_class`` validation images of every class, as an
    ImageFolder of symbolic links (file order as the data set lists them)."""
    root = RUNS / f"fashion_mnist_{per_class}_{val_per_class}"
    if (root / "done").exists():
        return root
    for split, n in (("train", per_class), ("val", val_per_class)):
        for cls in sorted(p for p in (DATA / split).iterdir() if p.is_dir()):
            dest = root / split / cls.name
            dest.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir())[:n]:
                link = dest / f.name
                if not link.exists():
                    link.symlink_to(f)
    (root / "done").write_text("")
    return root


def cli(argv: list[str]) -> None:
    print("$ cspnet " + " ".join(argv), flush=True)
    t = time.time()
    status = main(argv)
    print(f"  ({time.time() - t:.0f} s)", flush=True)
    if status != 0:
        sys.exit(f"cspnet {argv[0]} failed with status {status}")


def train(model: str, data: Path, threads: int) -> Path:
    run = RUNS / model
    if (run / "metrics.json").exists():
        return run
    resume = ["--resume"] if (run / "last.state.pt").exists() else []
    cli(["train", "--model", model, "--data", str(data), "--img-size", str(IMG), *TRAIN, "--seed", str(SEED),
         "--threads", str(threads), "--quiet", "--out", str(run), *resume])
    return run


def grads(models: list[str], out: Path, threads: int) -> dict:
    done = out / "grads.json"
    if done.exists():
        report = json.loads(done.read_text())
        stages = [st for m in report["models"] for st in m["stages"]]
        if len(report["models"]) == len(models) and all("duplicated_share_batches" in st for st in stages):
            return report
    cli(["grads", *models, "--alone", "--data", str(DATA), "--img-size", str(IMG), "--batches", str(BATCHES),
         "--batch-size", str(BATCH), "--seed", str(SEED), "--threads", str(threads), "--quiet", "--out", str(out)])
    return json.loads(done.read_text())


def pct(v) -> str:
    return "-" if v is None else f"{v:+.1%}"


def num(v) -> str:
    return "-" if v is None else f"{v:+.3f}"


def stage_table(report: dict) -> list[str]:
    base, csp = report["models"]
    lines = ["| stage | consumers | base: mean cos | base: duplicated | CSP fusion | CSP consumers | CSP: mean cos "
             "(blocks) | CSP: mean cos (all) | CSP: duplicated | CSP: bypass share | block grad on bypass |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_b = {s["stage"]: s for s in base["stages"]}
    by_c = {s["stage"]: s for s in csp["stages"]}
    for i in sorted(set(by_b) | set(by_c)):
        b, c = by_b.get(i), by_c.get(i)
        cells = [str(i + 1)]
        cells += [str(len(b["consumers"])), num(b["mean_cos_blocks"]), pct(b["duplicated_share"])] if b else ["-"] * 3
        if c:
            cells += [c["fusion"], str(len(c["consumers"])), num(c["mean_cos_blocks"]), num(c["mean_cos"]),
                      pct(c["duplicated_share"]), pct(c["bypass_share"]),
                      "-" if c["block_grad_on_bypass"] is None else f"{c['block_grad_on_bypass']:.1e}"]
        else:
            cells += ["-"] * 7
        lines.append("| " + " | ".join(cells) + " |")
    sb, sc = base["summary"], csp["summary"]
    lines.append(f"| mean | | {num(sb['mean_cos_blocks'])} | {pct(sb['duplicated_share'])} | | | "
                 f"{num(sc['mean_cos_blocks'])} | {num(sc['mean_cos'])} | {pct(sc['duplicated_share'])} | | |")
    return lines


def csp_stage_means(report: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """(mean, standard error) of the duplicated share over the stages where the CSP model's stage is
    CSP, for both models: each batch's share averaged over those stages, then over the batches."""
    base, csp = report["models"]
    idx = [s["stage"] for s in csp["stages"] if s["fusion"] != "none"]

    def stat(model):
        per_stage = [s["duplicated_share_batches"] for s in model["stages"] if s["stage"] in idx]
        per_batch = [sum(v) / len(v) for v in zip(*per_stage, strict=True)]
        n = len(per_batch)
        mean = sum(per_batch) / n
        sd = (sum((v - mean) ** 2 for v in per_batch) / (n - 1)) ** 0.5 if n > 1 else float("nan")
        return mean, sd / n ** 0.5

    return stat(base), stat(csp)


def observations(results: dict) -> list[str]:
    """What the tables say beyond the verdict, stated only where the numbers bear it out."""
    stages = [s for r in results.values() for m in r["models"] for s in m["stages"]]
    worst = max(abs(s["mean_cos"]) for s in stages)
    said = []
    if worst < 0.05:
        said.append(f"In every model the per-sample contributions of different consumers are close to orthogonal "
                    f"(every stage's mean cosine is within {worst:.3f} of 0), so the duplicated share is near 0 on "
                    "both sides and the differences between the models are of the size of the noise.")
    else:
        said.append(f"The largest mean cosine of a stage is {worst:.3f}.")
    bypass = [s["block_grad_on_bypass"] for s in stages if s["block_grad_on_bypass"] is not None]
    if bypass and max(bypass) == 0.0:
        said.append(f"What CSP changes structurally shows without noise: in every CSP stage ({len(bypass)} "
                    "measured) the block consumers send exactly nothing into the bypass channels (column \"block "
                    "grad on bypass\"), and the bypass gets its own share of the gradient from the concatenation.")
    return said


def main_bench(threads: int) -> None:
    if not DATA.is_dir():
        sys.exit(f"Fashion-MNIST not found at {DATA}; this benchmark needs ../shared/data")
    torch.set_num_threads(threads)
    before, t0 = machine_info(), time.time()
    results, trained = {}, {}
    for base, csp in PAIRS:
        results[(base, "init")] = grads([base, csp], OUT / f"init_{base}", threads)
        data = DATA if PER_CLASS[base] is None else subset(PER_CLASS[base], VAL_PER_CLASS[base])
        runs = [train(m, data, threads) for m in (base, csp)]
        for m, run in zip((base, csp), runs, strict=True):
            trained[m] = json.loads((run / "metrics.json").read_text())
        results[(base, "trained")] = grads([str(r) for r in runs], OUT / f"trained_{base}", threads)
    wall = time.time() - t0
    for (base, state), report in results.items():  # the heat maps as the current code draws them
        write_heatmaps(report, OUT / f"{state}_{base}")

    lines = [
        "# Duplicated gradient information (paper Section 3.1), measured",
        "",
        "Written by `python benchmarks/grads.py` (it runs `cspnet train` and `cspnet grads`; the numbers below "
        "are read from the `grads.json` files it leaves under `benchmarks/grads/`, beside one heat map per stage).",
        "",
        "**What is measured** (`cspnet grads --help`, README \"Duplicated gradients\"): for every dense stage, "
        "the gradient of the loss with respect to the stage's base tensor X is split into one contribution per "
        "consumer: each dense layer (its gradient on the block-input channels of its concatenated input), the "
        "block output (what the transition after the block sends back) and, in a CSP stage, the bypass (what "
        "reaches X other than through the blocks). Per sample, the cosine similarity of every pair of "
        "contributions is taken and averaged over the samples (the heat maps); **mean cos** is its mean over "
        "distinct pairs of block consumers (layers and block output; \"all\" adds the bypass), **duplicated** "
        "is the cross terms' share of ||dL/dX||^2 over all samples (0 when the contributions are orthogonal, "
        "1 - 1/K for K identical ones), **bypass share** the bypass's own share of it, **block grad on bypass** "
        "the largest (over batches) norm the block consumers send into the bypass channels of X, relative to "
        "||dL/dX||. Gradients are a training step's: BatchNorm on batch statistics, dropout off, cross-entropy.",
        "",
        f"**Set-up**: Fashion-MNIST ImageFolder `{DATA.relative_to(ROOT.parent)}` (2,500 train / 500 val, 10 "
        f"classes), grey, {IMG}x{IMG} px (the driver's size for small images); {BATCHES} batches of {BATCH} "
        f"training images ({BATCHES * BATCH} samples, no augmentation, the same images for every model), seed "
        f"{SEED}. At initialisation: the models as `create_model` builds them with seed {SEED}. Trained: "
        f"`cspnet train --data ... --img-size {IMG} {' '.join(TRAIN)} --seed {SEED}` (engine defaults otherwise), "
        "then `cspnet grads RUN_DIR ...` on the same images as at initialisation. Training images: " + "; ".join(
            f"{base} and {csp}: " + ("all 2,500 (val 500)" if PER_CLASS[base] is None else
                                     f"the first {PER_CLASS[base]} per class ({PER_CLASS[base] * 10}; val "
                                     f"{VAL_PER_CLASS[base] * 10})") for base, csp in PAIRS) + ".",
        "",
        f"Machine (when this file was written; the steps it did ran between the two lines): {before}.  ",
        f"After: {machine_info()}. CPU capability: {torch.backends.cpu.get_cpu_capability()}. "
        f"This invocation: {wall / 60:.1f} min (steps an earlier run finished are read back, not redone). "
        "Training runs (from their metrics.json): " + ", ".join(
            f"{m} {trained[m]['wall_s'] / 60:.1f} min at {trained[m]['images_per_s']:.1f} img/s" for pair in PAIRS
            for m in pair) + ".",
        "",
        "Training budget result (val top-1 and val loss after the one epoch; chance is 10% and a loss of "
        "2.30): " + ", ".join(f"{m} {trained[m]['top1']:.1f}% ({trained[m]['loss']:.2f})" for pair in PAIRS
                              for m in pair) + ". A val loss far above 2.30 means the short run has not settled "
        "(its first steps overshot); the trained rows are a few optimizer steps from initialisation, not "
        "converged models.",
        "",
        "## Summary",
        "",
        "Mean over the stages the CSP model makes cross-stage-partial (the plain last stage of csppeleenet is "
        "left out of both columns) of the duplicated share:",
        "",
        "| pair | weights | baseline | CSP | change | CSP lowers it (beyond 2 standard errors) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for base, csp in PAIRS:
        for state in ("init", "trained"):
            (b, sb), (c, sc) = csp_stage_means(results[(base, state)])
            se = (sb ** 2 + sc ** 2) ** 0.5
            verdict = "yes" if c < b - 2 * se else ("no, higher" if c > b + 2 * se else "no: within the noise")
            verdicts.append(verdict)
            lines.append(f"| {base} vs {csp} | {state} | {pct(b)} ± {sb:.1%} | {pct(c)} ± {sc:.1%} | "
                         f"{(c - b) * 100:+.1f} ± {2 * se * 100:.1f} points | {verdict} |")
    n_yes = verdicts.count("yes")
    lines += ["", f"(± one standard error over the {BATCHES} batches, each batch's share averaged over the "
                  "stages; the change's ± is two standard errors.)", "",
              "**Does CSP lower the measured duplication?** " + (
                  "Yes, in every comparison above." if n_yes == len(verdicts) else
                  ("Not measurably: " if n_yes == 0 else "Not everywhere: ") +
                  f"the CSP model's duplicated share is lower by more than two standard errors in {n_yes} of "
                  f"{len(verdicts)} comparisons ({verdicts.count('no: within the noise')} within the noise, "
                  f"{verdicts.count('no, higher')} higher)."),
              "", "\n\n".join(observations(results)), ""]
    for base, csp in PAIRS:
        for state in ("init", "trained"):
            report = results[(base, state)]
            where = f"grads/{state}_{base}"
            lines += [f"## {base} vs {csp}, {'at initialisation' if state == 'init' else 'trained one epoch'}", "",
                      *stage_table(report), "",
                      "Heat maps: " + ", ".join(f"[stage {s['stage'] + 1}]({where}/stage{s['stage'] + 1}.png)"
                                                for s in report["models"][0]["stages"]) + ".", ""]
    atomic_write_bytes(HERE / "grads.md", ("\n".join(lines) + "\n").encode())
    print(f"wrote {HERE / 'grads.md'}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    main_bench(ap.parse_args().threads)
