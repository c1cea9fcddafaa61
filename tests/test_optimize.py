"""optimize_for_inference: exact (within 1e-4 of eager), never changes the model, reports what it did."""

import copy

import pytest
import torch
from torch import nn

import cspnet
from cspnet.inference.compare import max_difference
from cspnet.inference.fuse import count_batchnorms, fuse
from cspnet.inference.optimize import bf16_supported, make_candidate, optimize_for_inference
from cspnet.layers import ConvBnAct
from test_fuse import randomize_bn, randomized


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_bn(cspnet.create_model("cspdarknet_tiny", num_classes=10)).eval()


def test_eager_candidates_are_exact_and_the_model_is_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    fast = cspnet.optimize_for_inference(model, x, compile=False, runtimes=False, rounds=3, warmup=1)
    assert fast.chosen in ("eager", "channels_last")
    report = fast.report
    assert set(report.candidates) == {"eager", "channels_last"}
    for r in report.candidates.values():
        assert r.exact and r.max_diff <= 1e-4 and r.latency.runs == 3 and r.latency.min <= r.latency.median
    assert (fast(x) - expected).abs().max().item() <= 1e-4
    # another shape takes the folded eager path, still exact
    x2 = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (fast(x2) - model(x2)).abs().max().item() <= 1e-4
    assert not fast(x).requires_grad  # an inference module: no autograd
    assert count_batchnorms(fast.model) == 0 and count_batchnorms(model) > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert "eager" in report.summary() and "*" in report.summary()


def test_compile_candidate_is_exact_and_its_cost_reported():
    """A small CSP stage rather than a whole model: inductor's compile time grows with the graph."""
    torch.manual_seed(0)
    block = lambda c: ConvBnAct(c, c, 3, act="mish")  # noqa: E731
    model = randomize_bn(nn.Sequential(ConvBnAct(3, 16, 3, 2), cspnet.cspify(block, 16, 32, depth=1))).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model, x, candidates=["compile"], rounds=2, warmup=1)
    r = fast.report.candidates["compile"]
    if r.error:  # no C++ toolchain for inductor: reported, and eager is used
        assert fast.chosen == "eager"
        pytest.skip(f"torch.compile unavailable here: {r.error}")
    assert r.exact and r.setup_s > 0 and r.latency is not None
    assert (fast(x) - expected).abs().max().item() <= 1e-4


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bf16")
def test_bf16_is_opt_in_and_its_error_is_measured(model):
    x = torch.randn(1, 3, 32, 32)
    fp32 = optimize_for_inference(model, x, compile=False, runtimes=False, rounds=1, warmup=1)
    assert "bf16" not in fp32.report.candidates
    fast = optimize_for_inference(model, x, candidates=["bf16"], rounds=1, warmup=1)
    r = fast.report.candidates["bf16"]
    assert 0 < r.max_diff < 5e-2  # bf16 is never exact, but close


def test_max_difference_is_relative_to_large_outputs():
    ref = torch.tensor([1000.0, -2.0])
    assert max_difference(ref + torch.tensor([0.5, 0.0]), ref) == pytest.approx(0.5 / 1000)
    small = torch.tensor([0.1, 0.2])
    assert max_difference(small + 1e-3, small) == pytest.approx(1e-3, rel=1e-4)
    assert max_difference([small, {"a": ref}], [small, {"a": ref}]) == 0.0
    assert max_difference(small, torch.zeros(3)) == float("inf")


def test_bad_arguments_are_one_line_errors(model):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown candidate 'tensorrt'"):
        optimize_for_inference(model, x, candidates=["tensorrt"])
    with pytest.raises(ValueError, match="example_input must be a tensor"):
        optimize_for_inference(model, [x])



def test_onednn_graph_candidate_is_exact_fused_and_leaves_the_global_switch_alone(model):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    assert not torch._C._jit_llga_enabled()
    fast = optimize_for_inference(model, x, candidates=["onednn_graph"], rounds=2, warmup=1)
    assert not torch._C._jit_llga_enabled()  # the fusion switch is restored
    r = fast.report.candidates["onednn_graph"]
    assert r.error is None and r.exact and r.latency is not None
    assert fast.chosen in ("eager", "onednn_graph")

    traced, any_shape = make_candidate("onednn_graph", fuse(copy.deepcopy(model)), x)
    assert not any_shape  # a trace is used for the example's shape only
    with torch.no_grad():
        assert (traced(x) - expected).abs().max().item() <= 1e-4
        graph = str(torch.jit.last_executed_optimized_graph())
        assert graph.count("oneDNNFusionGroup") >= 10  # the convs run fused, not in the fallback
        x2 = torch.randn(2, 3, 32, 32)  # another shape: the folded eager model, still exact
        assert (fast(x2) - model(x2)).abs().max().item() <= 1e-4


def test_onednn_graph_candidate_of_a_sliced_csp_model_has_no_slice_and_is_exact():
    m, x = randomized("csppeleenet_tiny"), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced, _ = make_candidate("onednn_graph", fuse(copy.deepcopy(m)), x)
        assert (traced(x) - m(x)).abs().max().item() <= 1e-4
        graph = str(torch.jit.last_executed_optimized_graph())
    assert "aten::slice" not in graph and graph.count("oneDNNFusionGroup") >= 10
    assert not any(type(mod).__name__ == "SplitConv" for mod in m.modules())  # the user's model is untouched
