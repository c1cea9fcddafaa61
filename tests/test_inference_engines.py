"""optimize_for_inference's peer-engine candidates (ONNX Runtime, OpenVINO): exact, wrapped in torch
tensors, skipped with a reason where missing; the choice rule on a fake clock; the call patterns."""

import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import cspnet
from cspnet.inference import optimize as optimize_mod
from cspnet.inference import runtimes, timing
from cspnet.inference.optimize import SIMPLICITY, optimize_for_inference
from cspnet.inference.runtimes import restructure, runtime_model
from cspnet.inference.timing import beats, choose, interleaved, pattern_options
from test_fuse import randomize_bn

HAVE = {name: runtimes.missing(name) is None for name in ("onnxruntime", "openvino")}
needs = {name: pytest.mark.skipif(not ok, reason=f"{name} is not installed (pip install 'cspnet[inference]')")
         for name, ok in HAVE.items()}


class TwoHeads(nn.Module):
    """Outputs nested as a dict holding a tensor and a list: what the wrappers must rebuild."""

    def __init__(self):
        super().__init__()
        self.body = cspnet.create_model("cspresnet_tiny", features_only=True, out_indices=(2, 3))

    def forward(self, x):
        a, b = self.body(x)
        return {"pooled": b.mean((2, 3)), "maps": [a, b]}


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    return randomize_bn(TwoHeads()).eval()


@pytest.mark.skipif(not all(HAVE.values()), reason="needs onnxruntime and openvino (pip install 'cspnet[inference]')")
def test_peer_engines_are_exact_and_give_torch_tensors_in_the_models_structure(heads):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = heads(x)
    fast = optimize_for_inference(heads, x, candidates=list(runtimes.RUNTIMES), rounds=3, warmup=1)
    report = fast.report
    for name in runtimes.RUNTIMES:
        r = report.candidates[name]
        assert r.error is None and r.skipped is None, (r.error, r.skipped)
        assert r.exact and r.max_diff <= 1e-4 and r.latency.runs == 3 and r.setup_s > 0
    for name in runtimes.RUNTIMES:  # each engine's wrapped form, whichever won
        fn, any_shape = optimize_mod.make_candidate(name, fast.model, x)
        out = fn(x)
        assert not any_shape and set(out) == {"pooled", "maps"} and isinstance(out["maps"], list)
        for got, want in ((out["pooled"], expected["pooled"]), *zip(out["maps"], expected["maps"], strict=True)):
            assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == want.shape
            assert (got - want).abs().max().item() <= 1e-4
    out = fast(x)
    assert isinstance(out["pooled"], torch.Tensor)
    x2 = torch.randn(2, 3, 32, 32)  # another shape: the folded eager model (the export is for x's shape)
    with torch.no_grad():
        assert (fast(x2)["pooled"] - heads(x2)["pooled"]).abs().max().item() <= 1e-4
    text = report.summary()
    assert "onnxruntime" in text and "openvino" in text and f"chose {fast.chosen}: " in text


def test_restructure_rebuilds_nesting_and_refuses_extra_outputs():
    t = [torch.full((1,), float(i)) for i in range(3)]
    out = restructure({"a": torch.zeros(1), "b": (torch.zeros(1), [torch.zeros(1)])}, t)
    assert out["a"].item() == 0 and out["b"][0].item() == 1 and out["b"][1][0].item() == 2
    assert isinstance(out["b"], tuple) and isinstance(out["b"][1], list)
    with pytest.raises(ValueError, match="more outputs"):
        restructure(torch.zeros(1), t)


def test_a_missing_engine_is_skipped_with_the_reason_and_the_exact_candidates_remain(heads, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    x = torch.randn(1, 3, 32, 32)
    fast = optimize_for_inference(heads, x, compile=False, rounds=2, warmup=1)
    for name in runtimes.RUNTIMES:
        r = fast.report.candidates[name]
        assert r.skipped == f"{name} is not installed: pip install 'cspnet[inference]'" and r.latency is None
    assert fast.chosen in ("eager", "channels_last")
    assert "skipped: openvino is not installed" in fast.report.summary()
    with pytest.raises(ValueError, match="^openvino is not installed"):
        runtime_model("openvino", b"", None)


@pytest.mark.parametrize("engine", [pytest.param(e, marks=needs[e]) for e in runtimes.RUNTIMES])
def test_an_onnx_model_the_engine_refuses_is_one_line_and_the_exact_candidates_remain(engine, heads, monkeypatch):
    with pytest.raises(ValueError) as e:
        runtime_model(engine, b"not an onnx graph", None)
    shown = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}[engine]
    assert str(e.value).startswith(f"{shown} refused the model")
    assert len(str(e.value).splitlines()) == 1

    monkeypatch.setattr(optimize_mod, "export_bytes", lambda *a, **k: b"not an onnx graph")
    fast = optimize_for_inference(heads, torch.randn(1, 3, 32, 32), candidates=[engine], rounds=2, warmup=1)
    r = fast.report.candidates[engine]
    assert "refused the model" in r.error and r.latency is None
    assert fast.chosen == "eager"


def test_the_peer_engines_are_cpu_float32_only():
    reason = optimize_mod._skip_reason("onnxruntime", torch.device("cpu"), torch.zeros(1, dtype=torch.float64))
    assert reason == "runs float32 inputs on the CPU only"
    assert optimize_mod._skip_reason("openvino", torch.device("cuda"), torch.zeros(1)) == reason


# --- the choice rule -------------------------------------------------------------------------


def test_a_clear_winner_wins_even_when_it_is_less_simple():
    samples = {"eager": [10.0, 11.0, 10.5, 10.2], "openvino": [8.0, 8.1, 8.2, 7.9]}
    assert choose(samples, SIMPLICITY) == "openvino"


def test_a_win_inside_the_noise_goes_to_the_simpler_candidate():
    # openvino's median is lower, but it was quicker in only 2 of 4 paired rounds: not a clear win
    samples = {"eager": [10.0, 10.0, 10.0, 10.0], "openvino": [9.0, 9.5, 10.5, 11.0]}
    assert not beats(samples["openvino"], samples["eager"])
    assert choose(samples, SIMPLICITY) == "eager"
    assert choose(samples, ["openvino", "eager"]) == "openvino"  # simplicity decides the tie


def test_stalled_calls_do_not_sway_the_choice():
    """A few calls of the simpler candidate stalled by other processes (a huge spread) do not let it
    tie with a candidate that was quicker in every round: the rule counts rounds won, not spreads."""
    eager = [30.0, 200.0, 12.0, 180.0, 35.0, 160.0, 15.0, 40.0]
    ort = [0.5, 0.4, 0.6, 0.5, 0.45, 0.5, 0.55, 0.5]
    assert choose({"eager": eager, "onnxruntime": ort}, SIMPLICITY) == "onnxruntime"


def test_the_simplest_unbeaten_candidate_wins_among_several():
    samples = {
        "eager": [20.0, 21.0, 20.5, 20.0],          # beaten by compile in every round
        "onednn_graph": [10.1, 9.9, 10.2, 9.8],     # compile quicker in only half: a tie
        "compile": [10.0, 10.0, 10.0, 10.0],
    }
    assert choose(samples, SIMPLICITY) == "onednn_graph"
    with pytest.raises(ValueError, match="no timed candidates"):
        choose({})


def test_the_choice_on_a_fake_clock_is_decided_by_the_measured_rounds(monkeypatch):
    """interleaved + choose end to end, no real time: each fake call advances the clock by a cost
    that depends on the round (candidate 'fast' is quicker in 3 of every 4 rounds)."""
    clock = [0.0]
    calls = {"eager": 0, "compile": 0}

    def make(name, costs):
        def fn():
            clock[0] += costs[calls[name] % len(costs)]
            calls[name] += 1
        return fn

    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock[0], sleep=lambda s: None))
    fns = {"eager": make("eager", [1.0]), "compile": make("compile", [0.5, 0.5, 0.5, 2.0])}
    times = interleaved(fns, rounds=8, warmup=0, clock=lambda: clock[0])
    assert times["eager"] == [1.0] * 8 and sorted(times["compile"]) == [0.5] * 6 + [2.0] * 2
    assert choose(times, SIMPLICITY) == "compile"  # 6 of 8 = 75%: a clear win
    fns["compile"] = make("compile", [0.5, 2.0])  # now quicker in only half the rounds
    calls["compile"] = 0
    times = interleaved(fns, rounds=8, warmup=0, clock=lambda: clock[0])
    assert choose(times, SIMPLICITY) == "eager"


def test_call_patterns_and_their_bad_value():
    loop = pattern_options("loop", ["a", "b"])
    sporadic = pattern_options("sporadic", ["a", "b"])
    assert loop["primed"] == {"a", "b"} and sporadic["primed"] == set()
    assert sporadic["pause"] > loop["pause"] > 0
    assert pattern_options("loop", ["a"], prime=False) == {"pause": loop["pause"], "primed": set()}
    model = cspnet.create_model("resnet_tiny", num_classes=3)
    with pytest.raises(ValueError, match="pattern='burst' is unknown; choose from loop, sporadic"):
        optimize_for_inference(model, torch.randn(1, 3, 32, 32), pattern="burst")


def test_sporadic_pattern_is_what_the_report_says_and_the_timing_pauses(monkeypatch):
    slept = []
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=timing.time.perf_counter,
                                                        sleep=lambda s: slept.append(s)))
    model = cspnet.create_model("resnet_tiny", num_classes=3)
    fast = optimize_for_inference(model, torch.randn(1, 3, 32, 32), compile=False, runtimes=False,
                                  pattern="sporadic", rounds=2, warmup=1)
    assert fast.report.pattern == "sporadic" and "sporadic calls" in fast.report.summary()
    assert slept == [timing.SPORADIC_IDLE_S] * 4  # 2 candidates x 2 rounds, each after idle time
