"""cspnet bench: interleaved timing, FLOP/s against the matmul peak, memory in a child process,
the pairs table and plot, and one-line errors."""

import json

import pytest
import torch

from cspnet.bench import memprobe
from cspnet.bench.pairs import Pair, PairsResult, format_pairs, plot_pairs
from cspnet.bench.profile import count_macs
from cspnet.bench.report import Row, format_result
from cspnet.bench.runner import run_bench, timm_counterpart
from cspnet.cli import main
from cspnet.inference.timing import Timing, interleaved


def test_timing_summary():
    t = Timing.of([0.3, 0.1, 0.2, 0.5, 0.4])
    assert (t.median, t.min, t.runs) == (0.3, 0.1, 5)
    assert t.spread == pytest.approx(0.45 - 0.15)
    with pytest.raises(ValueError):
        Timing.of([])


def test_interleaved_runs_every_candidate_in_shuffled_rounds():
    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    times = interleaved(fns, rounds=6, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6, "c": 6}
    timed = calls[3:]  # after one warm-up call each
    rounds = [tuple(timed[i:i + 3]) for i in range(0, 18, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len(set(rounds)) > 1  # the order changes from round to round


def test_a_primed_call_is_timed_right_after_an_untimed_call_of_its_own(monkeypatch):
    from types import SimpleNamespace

    from cspnet.inference import timing

    clock, log = [0.0], []

    def make(name):
        def fn():
            # on a fake clock: "slow" costs 20 cold (right after another candidate), 1 warm
            clock[0] += 1.0 if name != "slow" or log[-1:] == ["slow"] else 20.0
            log.append(name)
        return fn

    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock[0], sleep=lambda s: None))
    fns = {n: make(n) for n in ("slow", "other")}
    plain = interleaved(fns, rounds=6, warmup=0)
    log.clear()
    primed = interleaved(fns, rounds=6, warmup=0, primed={"slow"})
    pattern = "".join("s" if n == "slow" else "o" for n in log)
    assert pattern.replace("ss", "") == "oooooo"  # every timed "slow" right after an untimed one
    assert primed == {"slow": [1.0] * 6, "other": [1.0] * 6}
    assert plain["slow"][0] == 20.0  # the first plain call always starts cold


@pytest.fixture(scope="module")
def result():
    return run_bench(["resnet_tiny", "cspresnet_tiny"], ("eager", "onnxruntime", "opencv"), img_size=32,
                     batch_size=2, rounds=2, warmup=1, memory=False, progress=False)


def test_bench_rows_are_consistent(result):
    import cspnet

    assert [(r.model, r.engine) for r in result.rows] == [
        (m, e) for m in ("resnet_tiny", "cspresnet_tiny") for e in ("eager", "onnxruntime", "opencv")]
    assert result.matmul_gflop_s > 0
    for r in result.rows:
        macs = count_macs(cspnet.create_model(r.model), 32)
        assert r.gflops == pytest.approx(2 * macs / 1e9)
        assert r.lat_min_ms <= r.lat_ms and r.fps == pytest.approx(1000 / r.lat_ms)
        assert r.gflop_per_s == pytest.approx(r.gflops / (r.lat_ms / 1000))
        assert r.peak_share == pytest.approx(r.gflop_per_s / result.matmul_gflop_s)
        assert r.batch_size == 2 and r.img_per_s == pytest.approx(2000 / r.batch_ms)
        assert r.max_diff <= 1e-3, r.note  # every engine computes the same outputs


def test_bench_formats(result):
    md = format_result(result, "md")
    assert "| model | engine |" in md and "matmul peak" in md and md.count("| resnet_tiny |") == 3
    data = json.loads(format_result(result, "json"))
    assert len(data["rows"]) == 6 and data["matmul_gflop_s"] == result.matmul_gflop_s
    csv = format_result(result, "csv").splitlines()
    assert csv[0].startswith("model,engine,") and len(csv) == 7


def test_memory_probe_runs_in_a_child_and_training_needs_more():
    infer = memprobe.measure("resnet_tiny", 64, 1, "infer")
    train = memprobe.measure("resnet_tiny", 64, 16, "train")
    for m in (infer, train):
        assert m["peak_mb"] >= m["base_mb"] > 0 and m["step_mb"] == pytest.approx(m["peak_mb"] - m["base_mb"],
                                                                                   abs=0.2)
    assert train["step_mb"] > infer["step_mb"]


def test_vs_timm_names():
    assert timm_counterpart("timm_cspresnext50") == "cspresnext50"
    assert timm_counterpart("timm_resnext50_32x4d") == "resnext50_32x4d"
    with pytest.raises(ValueError, match="no timm twin"):
        timm_counterpart("cspresnext50")


def _row(model, gflops, lat, mem):
    return Row(model, "eager", 256, 1.0, gflops, lat_ms=lat, batch_ms=lat * 10, train_mem_mb=mem)


def test_pairs_changes_and_the_flops_rule(result, tmp_path):
    good = Pair(_row("a", 10.0, 100.0, 1000.0), _row("csp_a", 8.0, 84.0, 600.0))
    bad = Pair(_row("b", 10.0, 100.0, 1000.0), _row("csp_b", 8.0, 86.0, 600.0))
    assert good.change("gflops") == pytest.approx(-0.2) and good.change("train_mem_mb") == pytest.approx(-0.4)
    assert good.time_follows_flops() is True  # 0.84 <= 0.80 + 0.05
    assert bad.time_follows_flops() is False  # 0.86 > 0.85
    pairs = PairsResult([good, bad], result)
    md = format_pairs(pairs, "md")
    assert "| a -> csp_a | 256 |" in md and "(-20.0%)" in md and "**no**" in md
    assert json.loads(format_pairs(pairs, "json"))["pairs"][1]["time follows FLOPs"] is False
    png = tmp_path / "p.png"
    plot_pairs(pairs, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_prints_a_table(capsys, tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "cspresnet_tiny", "--engine", "eager", "--img-size", "32", "--rounds", "2",
                 "--warmup", "1", "--batch-size", "2", "--no-memory", "--format", "json", "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed and printed["rows"][0]["model"] == "cspresnet_tiny"


@pytest.mark.parametrize("args,expect", [
    (["nosuch"], "unknown model 'nosuch'"),
    (["cspdarknet_tiny_prn", "--img-size", "100"], "not divisible by the model's stride 32"),
    (["resnet_tiny", "--pairs"], "--pairs takes no MODEL"),
    ([], "name at least one MODEL"),
    (["resnet_tiny", "-o", "/nonexistent-dir/b.md"], "does not exist"),
    (["timm_resnet50", "resnet_tiny", "--vs-timm", "--no-memory", "--rounds", "1"], "no timm twin"),
])
def test_cli_bench_bad_input(args, expect, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cspnet bench: error: ") and expect in err


def test_cuda_request_without_cuda_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["bench", "resnet_tiny", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(__import__("importlib").util.find_spec("openvino") is None,
                    reason="openvino is not installed (pip install 'cspnet[inference]')")
def test_openvino_and_int8_engines_time_like_the_others_in_the_sporadic_pattern():
    res = run_bench(["resnet_tiny"], ("eager", "openvino", "int8"), img_size=32, batch_size=2, rounds=2, warmup=1,
                    memory=False, progress=False, pattern="sporadic")
    rows = {r.engine: r for r in res.rows}
    assert set(rows) == {"eager", "openvino", "int8"}
    assert rows["openvino"].max_diff <= 1e-4 and rows["openvino"].lat_ms > 0 and rows["openvino"].batch_ms > 0
    assert rows["int8"].note == "openvino int8, calibrated on random images: time only"
    assert 0 < rows["int8"].max_diff and rows["int8"].lat_ms > 0
    assert "(sporadic: each call after 20 ms idle, none primed)" in format_result(res, "md")


@pytest.mark.parametrize("engine,module", [("openvino", "openvino"), ("onnxruntime", "onnxruntime")])
def test_an_engine_that_is_not_installed_is_one_line(engine, module, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, module, None)
    assert main(["bench", "resnet_tiny", "--engine", "eager", engine, "--no-memory"]) == 2
    err = capsys.readouterr().err.strip()
    extra = "inference" if engine == "openvino" else "export"
    assert err == f"cspnet bench: error: --engine {engine} needs {module}: pip install 'cspnet[{extra}]'"


def test_calib_data_goes_with_the_int8_engine(capsys):
    assert main(["bench", "resnet_tiny", "--engine", "eager", "--calib-data", "builtin", "--no-memory"]) == 2
    assert capsys.readouterr().err.strip() == "cspnet bench: error: --calib-data goes with --engine int8"
