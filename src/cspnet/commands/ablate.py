"""``cspnet ablate``: the paper's Table 1 (partial ratio x fusion) for a model family, trained here.

Every option is checked, and every variant built at the requested size, before the first run
starts; the runs themselves are ``cspnet train`` runs (:mod:`cspnet.analysis.ablate`).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .args import non_negative_float, non_negative_int, positive_float, positive_int

DEFAULT_OUT = Path("runs/ablate")


def add_parser(sub) -> None:
    from ..analysis.ablate import DEFAULT_GAMMAS, FAMILIES, FUSIONS

    p = sub.add_parser(
        "ablate", help="train a family's baseline and its CSP variants (gamma x fusion) and report them (Table 1)",
        description="Train the family's baseline (fusion none) and every requested CSP variant with the same "
                    "recipe, budget and seeds, then write OUT/report.md (Table 1 layout), OUT/runs.csv and "
                    "OUT/ablation.png. Finished runs are kept; an interrupted ablation resumes where it stopped.")
    p.add_argument("--family", required=True, help=f"one of {', '.join(FAMILIES)}")
    p.add_argument("--data", default="builtin", help="data spec as for cspnet train (default builtin)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per run (default: cspnet train's)")
    p.add_argument("--img-size", type=positive_int, default=None, help="training resolution (default: cspnet train's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: cspnet train's")
    p.add_argument("--warmup-epochs", type=non_negative_float, default=None, help="default: cspnet train's")
    p.add_argument("--width-mult", type=positive_float, default=1.0,
                   help="channel multiplier for every variant (default 1)")
    p.add_argument("--depth-mult", type=positive_float, default=1.0,
                   help="block-count multiplier for every variant (default 1)")
    p.add_argument("--gammas", default=",".join(f"{g:g}" for g in DEFAULT_GAMMAS),
                   help="partial ratios in (0, 1), comma-separated (default %(default)s)")
    p.add_argument("--fusions", default=",".join(FUSIONS), help="comma-separated, of %(default)s")
    p.add_argument("--seeds", type=str, default="3", help="runs per variant, seeds 0..K-1 (default 3)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"run directories, and the report (default {DEFAULT_OUT})")
    p.add_argument("--report", default=None, help="where report.md, runs.csv and ablation.png go (default: --out)")
    p.add_argument("--rounds", type=non_negative_int, default=25,
                   help="latency timing rounds at report time (0: no latency column; default 25)")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op CPU threads (default: torch's)")
    p.add_argument("--device", default="auto", help="training device, as for cspnet train (default auto)")
    p.add_argument("--partial", action="store_true",
                   help="train nothing: report the runs finished so far, marked partial")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _seeds(text: str) -> int:
    from ..errors import OptionError

    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise OptionError("{seeds} must be a whole number >= 1 (the runs per variant: seeds 0..K-1)", seeds=text)
    return value


def train_run(argv: list[str]) -> int:
    """One run through the training driver, exactly as ``cspnet train ARGV`` would run it."""
    from .driver import _train_parser, run_train

    return run_train(_train_parser().parse_args(argv))


def command_line(args) -> str:
    """The command that reproduces the report (every option that shapes it, spelled out)."""
    opts = ["--family", args.family, "--data", args.data]
    for flag in ("epochs", "img_size", "batch_size", "warmup_epochs"):
        if getattr(args, flag) is not None:
            opts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    opts += ["--width-mult", f"{args.width_mult:g}", "--depth-mult", f"{args.depth_mult:g}", "--gammas", args.gammas,
             "--fusions", args.fusions, "--seeds", str(args.seeds), "--out", args.out,
             *(["--report", args.report] if args.report else [])]
    return "cspnet ablate " + shlex.join(opts)


def run(args) -> int:
    import torch

    from ..analysis.ablate import (
        Recipe,
        check_buildable,
        check_family,
        finished_runs,
        parse_fusions,
        parse_gammas,
        plan_variants,
        run_ablation,
    )
    from ..analysis.ablate_report import format_table, write_report

    family = check_family(args.family)
    gammas, fusions = parse_gammas(args.gammas), parse_fusions(args.fusions)
    seeds = _seeds(args.seeds)
    recipe = Recipe(family, args.data, args.epochs, args.img_size, args.width_mult, args.depth_mult, args.batch_size,
                    args.warmup_epochs)
    variants = plan_variants(family, gammas, fusions)
    check_buildable(variants, recipe)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    partial = ""
    if args.partial:
        runs, partial = finished_runs(out, recipe, variants, seeds)
        variants = [v for v in variants if any(r.variant == v for r in runs)]
        trained = 0
    else:
        runs, trained = run_ablation(out, recipe, variants, seeds, args.threads, args.device, args.quiet,
                                     train=train_run)
    report = Path(args.report) if args.report else out
    summaries = write_report(report, variants, runs, recipe, command_line(args), args.rounds, not args.quiet,
                             partial)
    print(format_table(summaries))
    print(f"{trained} run(s) trained, {len(runs) - trained} already finished; report in {report / 'report.md'}")
    return 0
