"""Before/after of the one change that made CSP's DenseNet-style stages follow their FLOPs in time.

    python benchmarks/concat_fix.py           # writes benchmarks/concat_fix.md (quiet machine: ~10 minutes)
    python benchmarks/concat_fix.py --quick   # smoke run: tiny models, 3 rounds, printed only

CSPPeleeNet and CSPDenseNet-201 close each stage with concat -> 2x2 pool -> 1x1 transition. The
first form ("before") concatenated the two full-resolution parts and pooled the result; in every
engine that concatenation was a large copy, and in oneDNN Graph a strided one (the bypass is a
channel slice of a channels-last tensor). Pooling works channel by channel, so the stages now pool
each part and concatenate the quarter-size results ("after"): the same function (tests/test_csp.py),
a quarter of the copying. Both forms are built from one model by switching
``CrossStagePartial._pool_parts``, and timed interleaved with the plain baseline in one run.
"""

from __future__ import annotations

import argparse
import copy
import datetime
from pathlib import Path

import torch

import cspnet
from cspnet.csp import CrossStagePartial
from cspnet.tools.bench import machine_info
from cspnet.tools.checkpoint import atomic_write_bytes
from cspnet.tools.fuse import fuse
from cspnet.tools.optimize import make_candidate, max_difference
from cspnet.tools.profile import count_macs
from cspnet.tools.timing import Timing, interleaved

PAIRS = [("peleenet", "csppeleenet", 224), ("densenet201", "cspdensenet201", 256)]
QUICK_PAIRS = [("peleenet_tiny", "csppeleenet_tiny", 64), ("densenet_tiny", "cspdensenet_tiny", 64)]
ENGINES = ("eager", "onednn_graph", "onnxruntime")
MARGIN = 0.05  # as cspnet.tools.pairs: the CSP/baseline latency ratio may exceed the FLOPs ratio by 5 points


def with_pool_parts(model: torch.nn.Module, on: bool) -> torch.nn.Module:
    model = copy.deepcopy(model)
    stages = [m for m in model.modules() if isinstance(m, CrossStagePartial) and m.pool_position == "before_transition"
              and m.fusion != "none"]
    for stage in stages:
        stage._pool_parts = on
    return model


def runner(engine: str, model: torch.nn.Module, x: torch.Tensor):
    if engine == "onnxruntime":
        import onnxruntime as ort

        from cspnet.tools.export import prepare_for_export, to_onnx_bytes

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as cspnet bench does
        sess = ort.InferenceSession(to_onnx_bytes(prepare_for_export(model), x), opts,
                                    providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        return lambda: torch.from_numpy(sess.run(None, feed)[0])
    fn, _ = make_candidate(engine, fuse(copy.deepcopy(model)), x)
    return lambda: fn(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=25)
    args = p.parse_args()
    pairs, rounds = (QUICK_PAIRS, 3) if args.quick else (PAIRS, args.rounds)
    before_info = machine_info()
    calls, flops, diffs = {}, {}, {}
    for base, csp, size in pairs:
        torch.manual_seed(0)
        x = torch.randn(1, 3, size, size)
        models = {base: cspnet.create_model(base).eval()}
        csp_model = cspnet.create_model(csp).eval()
        models[f"{csp} before"] = with_pool_parts(csp_model, False)
        models[f"{csp} after"] = with_pool_parts(csp_model, True)
        with torch.no_grad():
            diffs[csp] = max_difference(models[f"{csp} after"](x), models[f"{csp} before"](x))
        for key, model in models.items():
            flops[key] = 2 * count_macs(model, size) / 1e9
            for engine in ENGINES:
                calls[(key, engine)] = runner(engine, model, x)
    with torch.no_grad():
        times = interleaved(calls, rounds, 3, pause=0.01, progress="concat_fix")
    ms = {k: Timing.of(v).median * 1e3 for k, v in times.items()}
    lines = [
        "# CSP stages: pool the parts, then concatenate (before/after)",
        "",
        f"Written by `python benchmarks/concat_fix.py` on {datetime.date.today()}.",
        f"Before: {before_info}.  ",
        f"After: {machine_info()}.",
        "",
        "Batch 1, fp32, median of "
        f"{rounds} interleaved rounds (every model x engine in one shuffled run). 'before': concat the full-"
        "resolution parts, then pool; 'after': pool each part, then concat (the code now). The outputs of "
        "the two forms differ by at most "
        + ", ".join(f"{d:.1e} ({c})" for c, d in diffs.items())
        + f". 'follows FLOPs': CSP/baseline latency ratio <= FLOPs ratio + {MARGIN:.0%} (issue 6).",
        "",
        "| model | engine | GFLOPs | latency (ms) | vs baseline | FLOPs vs baseline | follows FLOPs |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for base, csp, _ in pairs:
        for engine in ENGINES:
            ref = ms[(base, engine)]
            lines.append(f"| {base} | {engine} | {flops[base]:.3f} | {ref:.2f} |  |  |  |")
            for form in ("before", "after"):
                key = f"{csp} {form}"
                lat, fl = ms[(key, engine)] / ref, flops[key] / flops[base]
                lines.append(f"| {key} | {engine} | {flops[key]:.3f} | {ms[(key, engine)]:.2f} | {lat - 1:+.1%} | "
                             f"{fl - 1:+.1%} | {'yes' if lat <= fl + MARGIN else '**no**'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        out = Path(__file__).with_name("concat_fix.md")
        atomic_write_bytes(out, text.encode())
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
