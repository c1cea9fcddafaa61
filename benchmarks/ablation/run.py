"""The paper's Table 1 on real data: ``cspnet ablate`` on Fashion-MNIST (torchvision's raw files,
the full 60,000 train / 10,000 test), the PeleeNet family width- and depth-scaled to fit a busy
2-core CPU, the baseline and all nine gamma x fusion variants, 3 seeds each.

Writes benchmarks/ablation/report.md, runs.csv and ablation.png; the run directories go to
``--runs`` (default /work/ablation_runs/peleenet_fmnist, outside git). Interrupted, it resumes where
it stopped when run again (finished runs are kept); run on a finished ablation, it only rewrites the
report. ``--partial`` writes the report of the runs finished so far, marked partial.

    nice -n 5 python benchmarks/ablation/run.py > ablation.log 2>&1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cspnet.cli import main

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "shared" / "data" / "classify"
# one epoch of the full training set per run: the 30 runs took an hour on this 2-core machine, shared
RECIPE = ["--family", "peleenet", "--epochs", "1", "--img-size", "32", "--batch-size", "256",
          "--warmup-epochs", "0.2", "--width-mult", "0.25", "--depth-mult", "0.34",
          "--gammas", "0.25,0.5,0.75", "--fusions", "first,last,full", "--seeds", "3", "--threads", "1"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=DATA, help="the directory holding FashionMNIST/raw")
    p.add_argument("--runs", type=Path, default=Path("/work/ablation_runs/peleenet_fmnist"))
    p.add_argument("--partial", action="store_true", help="report the finished runs only, marked partial")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if not (args.data_root / "FashionMNIST" / "raw").is_dir():
        sys.exit(f"{args.data_root}/FashionMNIST/raw is missing: this benchmark needs the real data")
    data = f"torchvision:FashionMNIST:{args.data_root.resolve()}"
    sys.exit(main(["ablate", *RECIPE, "--data", data, "--out", str(args.runs), "--report", str(HERE),
                   *(["--partial"] if args.partial else [])]))
