"""The darknet readers' fuzz test, run long: random mutations of every released cfg and of .weights
files must give a network (that runs, on the meta device, with the shapes it was built for) or
cspnet's one-line CfgError / WeightsError, nothing else.

    python benchmarks/fuzz_darknet.py                  # 10,000 cfg + 2,000 weights cases -> benchmarks/fuzz_darknet.md
    python benchmarks/fuzz_darknet.py --cfg-cases 200 --weights-cases 50 --out runs/fuzz.md   # smoke run

The checks and the mutation strategies are those of tests/test_darknet_fuzz.py (the suite runs
them briefly). A failure stops the run with hypothesis's shrunk example and the report is not
written. Needs ../shared/reference/darknet-cfg (or CSPNET_SHARED).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from tqdm import tqdm

from cspnet.checkpoint import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]


def load_fuzz_module():
    sys.path.insert(0, str(ROOT / "tests"))  # for its `from conftest import ...`
    spec = importlib.util.spec_from_file_location("darknet_fuzz", ROOT / "tests" / "test_darknet_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def error_kind(message: str) -> str:
    """A message with its place, names and numbers blanked: what kind of mistake it reports."""
    text = message.split(": ", 1)[1] if ": " in message else message
    text = re.sub(r"^layer \d+ \[[^\]]*\]: |^\[net\]: ", "", text)
    text = re.sub(r"'[^']*'|\[[^\]]*\]", "…", text)
    text = re.sub(r"-?\d[\d,.]*(e[+-]?\d+)?", "N", text)
    return text.split(";")[0][:70]


def run(strategy, check, cases: int, label: str, seed: int):
    """Run ``check`` on ``cases`` examples of ``strategy``; returns (outcome counts, by-op counts,
    error kinds)."""
    outcomes, by_op, kinds = Counter(), Counter(), Counter()
    bar = tqdm(total=cases, desc=label, unit="case")

    @settings(max_examples=cases, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(case):
        (result, message), ops = check(case)
        outcomes[result] += 1
        for op in ops:
            by_op[op, result] += 1
        if message:
            kinds[error_kind(message)] += 1
        bar.update(1)

    from hypothesis import seed as hypothesis_seed

    hypothesis_seed(seed)(prop)()
    bar.close()
    return outcomes, by_op, kinds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg-cases", type=int, default=10_000)
    parser.add_argument("--weights-cases", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "fuzz_darknet.md"))
    args = parser.parse_args(argv)
    fuzz = load_fuzz_module()
    texts = fuzz.cfg_texts()
    if not texts:
        print(f"fuzz_darknet: darknet cfgs not found: {fuzz.CFG_DIR}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    start = time.time()
    cfg_out, cfg_ops, cfg_kinds = run(fuzz.mutated_cfg(), lambda c: (fuzz.check_cfg(c[2]), c[1]), args.cfg_cases,
                           "cfg mutations", args.seed)
    cfg_time = time.time() - start
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.weights"
        w_out, w_ops, w_kinds = run(fuzz.mutated_weights(), lambda c: (fuzz.check_weights(c[0], c[2], path), [c[1]]),
                           args.weights_cases, "weights mutations", args.seed)
    total_time = time.time() - start
    write_report(args, texts, (cfg_out, cfg_ops, cfg_kinds), (w_out, w_ops, w_kinds), cfg_time, total_time)
    print(f"wrote {args.out}")
    return 0


def _table(outcomes, by_op, results):
    ops = sorted({op for op, _ in by_op})
    lines = ["| mutation | " + " | ".join(results) + " |", "|---|" + "---:|" * len(results)]
    for op in ops:
        lines.append(f"| {op} | " + " | ".join(str(by_op[op, r]) for r in results) + " |")
    lines.append("| **cases** | " + " | ".join(f"**{outcomes[r]}**" for r in results) + " |")
    return "\n".join(lines)


def _kinds(kinds: Counter, most: int = 15) -> str:
    lines = ["| count | message (names and numbers blanked) |", "|---:|---|"]
    lines += [f"| {n} | {kind.replace('|', '/')} |" for kind, n in kinds.most_common(most)]
    rest = sum(kinds.values()) - sum(n for _, n in kinds.most_common(most))
    if rest:
        lines.append(f"| {rest} | ({len(kinds) - most} other kinds) |")
    return "\n".join(lines)


def write_report(args, texts, cfg, weights, cfg_time, total_time):
    (cfg_out, cfg_ops, cfg_kinds), (w_out, w_ops, w_kinds) = cfg, weights
    cfg_total, w_total = sum(cfg_out.values()), sum(w_out.values())
    text = f"""# Darknet readers under fuzzing

Written by `python benchmarks/fuzz_darknet.py --cfg-cases {args.cfg_cases} --weights-cases {args.weights_cases} \
--seed {args.seed}` on {datetime.date.today().isoformat()} (torch {torch.__version__}).

Every case had one of the allowed outcomes: a network that ran (meta device, every layer's output
shape equal to the one the builder worked out) or a one-line `CfgError` naming `fuzz.cfg` and a
line; a loaded .weights file of exactly the right size or a one-line `WeightsError`. Any other
exception or a wrong shape would have stopped the run.

## cfg files: {cfg_total:,} cases in {cfg_time / 60:.1f} min

Each case applies 1-4 random edits (change a value or a number, delete, duplicate, swap or
truncate lines, replace a section header, insert an option or random characters) to one of the
{len(texts)} released cfgs under `darknet-cfg/` (hypothesis, seed {args.seed}). A case counts once per
edit it made in the table below.

{_table(cfg_out, cfg_ops, ["network", "CfgError"])}

The errors, by kind:

{_kinds(cfg_kinds)}

## .weights files: {w_total:,} cases

Truncation, appended bytes, a changed header field (version, seen), a flipped byte or a cut-out
piece, of valid files for two small cfgs that hold every kind of weight darknet writes
(batch-normalised, biased, grouped and shared convolutions; connected layers with and without BN).
A flipped byte inside the weights is a valid file with other values, so it loads.

{_table(w_out, w_ops, ["loaded", "WeightsError"])}

{_kinds(w_kinds)}

Total time {total_time / 60:.1f} min on one thread.
"""
    atomic_write_bytes(args.out, text.encode())


if __name__ == "__main__":
    sys.exit(main())
