"""``cspnet grads``: the per-consumer gradient similarity on cases whose answer is known by
construction, the CSP bypass's gradient, parity with autograd's total, and the command."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import cspnet
from cspnet.analysis.grads import BYPASS, OUT, SimilarityStats, Taps, measure
from cspnet.cli import main


def _contributions(consumers, loss_fn, x):
    """Each consumer's gradient into the shared tensor ``x`` (through a tap), and autograd's total."""
    with Taps() as taps:
        for i, c in enumerate(consumers):
            taps.add(str(i), c, "input")
        loss = loss_fn(x)
        keys = sorted(taps.tensors)
        grads = torch.autograd.grad(loss, [taps.tensors[k] for k in keys] + [x])
    return torch.stack(grads[:-1]), grads[-1]


def test_identical_consumers_give_similarity_one():
    torch.manual_seed(0)
    a = nn.Linear(16, 5)
    b = copy.deepcopy(a)  # the same weights: identical inputs and identical upstream gradients
    x = torch.randn(32, 16, requires_grad=True)

    def loss_fn(t):
        return (a(t) + b(t)).pow(2).sum()

    contrib, total = _contributions([a, b], loss_fn, x)
    torch.testing.assert_close(contrib.sum(0), total)  # the taps split autograd's gradient, nothing lost
    stats = SimilarityStats(["a", "b"])
    stats.add(contrib)
    torch.testing.assert_close(stats.similarity, torch.ones(2, 2, dtype=torch.float64))
    assert stats.mean_offdiag() == pytest.approx(1.0, abs=1e-9)
    assert stats.duplicated_share() == pytest.approx(0.5, abs=1e-9)  # 1 - 1/K for K identical senders
    assert stats.batch_shares == [pytest.approx(0.5, abs=1e-9)]
    assert stats.samples == 32


def test_independent_random_consumers_give_near_zero():
    torch.manual_seed(0)
    d = 64
    stats = SimilarityStats(["a", "b"])
    one_sample = []
    for _ in range(8):  # 8 x 500 samples, fresh random consumers and upstream gradients each time
        a, b = nn.Linear(d, d), nn.Linear(d, d)
        x = torch.randn(500, d, requires_grad=True)
        ua, ub = torch.randn(500, d), torch.randn(500, d)
        contrib, _ = _contributions([a, b], lambda t, a=a, b=b, ua=ua, ub=ub: (ua * a(t)).sum() + (ub * b(t)).sum(), x)
        stats.add(contrib)
        one_sample.append(torch.nn.functional.cosine_similarity(contrib[0], contrib[1], dim=1))
    per_sample = torch.cat(one_sample)
    assert stats.samples == 4000
    assert per_sample.abs().mean() > 0.05  # single samples are not orthogonal: the mean is what goes to 0
    assert abs(stats.mean_offdiag()) < 0.01  # ~1/sqrt(64 * 4000) = 0.002 expected
    assert abs(stats.duplicated_share()) < 0.02
    assert stats.similarity.diagonal().tolist() == pytest.approx([1.0, 1.0])


def _batches(n=2, b=8, size=32, chans=1, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, chans, size, size, generator=g), torch.randint(0, classes, (b,), generator=g))
            for _ in range(n)]


def test_csp_bypass_gets_no_gradient_from_the_block_consumers():
    torch.manual_seed(0)
    model = cspnet.create_model("csppeleenet_tiny", num_classes=10, in_chans=1)
    stages = measure(model, _batches())
    csp = [s for s in stages if s["fusion"] != "none"]
    assert [s["stage"] for s in csp] == [0, 1, 2]
    for s in csp:
        names = s["consumers"]
        assert names[-2:] == [OUT, BYPASS] and names[0] == "L1"
        assert s["block_grad_on_bypass"] == 0.0  # exactly: the blocks never reach the bypass channels
        assert s["unaccounted"] < 1e-6  # everything else on the part channels comes from the block consumers
        assert 0.0 < s["bypass_share"] < 1.0
        sim = torch.tensor(s["similarity"])
        k = names.index(BYPASS)
        assert sim[k, k] == pytest.approx(1.0)
        assert sim[k, :k].abs().max() == 0.0 and sim[:k, k].abs().max() == 0.0  # disjoint channels: cosine 0
    plain = [s for s in stages if s["fusion"] == "none"]
    assert plain and all(BYPASS not in s["consumers"] and s["block_grad_on_bypass"] is None for s in plain)


def test_baseline_contributions_add_up_to_autograds_gradient():
    torch.manual_seed(0)
    model = cspnet.create_model("densenet_tiny", num_classes=10, in_chans=1)
    stages = measure(model, _batches())
    assert [s["kind"] for s in stages] == ["dense"] * 4
    for s, depth in zip(stages, (2, 2, 2, 2), strict=True):
        assert s["consumers"] == [f"L{k + 1}" for k in range(depth)] + [OUT]
        assert s["unaccounted"] < 1e-5  # the dense layers and the block output are all of dL/dX
        assert s["samples"] == 16
        sim = torch.tensor(s["similarity"])
        torch.testing.assert_close(sim, sim.T)
        assert sim.diagonal().tolist() == pytest.approx([1.0] * len(s["consumers"]))


def test_residual_stages_compare_the_branches_and_the_output():
    torch.manual_seed(0)
    model = cspnet.create_model("cspdarknet_tiny", num_classes=10, in_chans=1)
    stages = measure(model, _batches(n=1))
    depths = [len(stage.blocks) for stage in model.stages]
    assert [s["stage"] for s in stages] == list(range(len(depths)))
    for s, depth in zip(stages, depths, strict=True):
        assert s["kind"] == "residual" and s["consumers"] == [f"B{k + 1}" for k in range(depth)] + [OUT]
        assert s["unaccounted"] is None and s["samples"] == 8
    # a stack whose only block widens the stream has one consumer of it: nothing to compare
    assert measure(cspnet.create_model("resnet_tiny", num_classes=10, in_chans=1), _batches(n=1)) == []


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "g"
    status = main(["grads", "peleenet_tiny", "--batches", "2", "--batch-size", "8", "--out", str(out), "--quiet",
                   "--img-size", "32"])
    assert status == 0
    report = json.loads((out / "grads.json").read_text())
    assert [m["model"] for m in report["models"]] == ["peleenet_tiny", "csppeleenet_tiny"]  # its pair, baseline first
    assert report["batches"] == 2 and report["batch_size"] == 8
    base, csp = report["models"]
    assert base["data"] == "builtin" and base["img_size"] == 32 and base["in_chans"] == 1
    for m in (base, csp):
        assert len(m["stages"]) == 4 and m["summary"]["stages"] == 4
        for s in m["stages"]:
            k = len(s["consumers"])
            assert s["samples"] == 16 and len(s["similarity"]) == k and all(len(r) == k for r in s["similarity"])
            assert -1.0 <= s["duplicated_share"] <= 1.0 and len(s["duplicated_share_batches"]) == 2
    assert [BYPASS in s["consumers"] for s in csp["stages"]] == [True, True, True, False]
    assert all(s["block_grad_on_bypass"] == 0.0 for s in csp["stages"][:3])
    for i in range(1, 5):
        assert (out / f"stage{i}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "peleenet_tiny: K / cos / dup / bypass" in printed and printed.count("\n") >= 6


@pytest.mark.parametrize("argv, named", [
    (["grads", "no_such_model"], "unknown model 'no_such_model'"),
    (["grads", "peleenet_tiny", "--batches", "0"], "--batches"),
    (["grads", "peleenet_tiny", "--batch-size", "-3"], "--batch-size"),
    (["grads", "darknet_ref"], "has no registered pair"),
    (["grads", "darknet_ref", "--alone", "--img-size", "32"], "has no dense or residual stage"),
    (["grads", "peleenet_tiny", "--data", "/no/such/dir"], "/no/such/dir"),
    (["grads", "peleenet_tiny", "--device", "tpu9"], "--device tpu9"),
])
def test_bad_input_is_one_line(argv, named, capsys, tmp_path):
    try:
        status = main(argv + ["--out", str(tmp_path / "o")])
    except SystemExit as e:  # argparse's own refusals exit from the parser
        status = e.code
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and err.startswith("cspnet grads: error:") and named in err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_checkpoint_with_other_classes_is_refused(tmp_path, capsys):
    from cspnet.checkpoint import save_checkpoint

    model = cspnet.create_model("peleenet_tiny", num_classes=3, in_chans=1)
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path)
    status = main(["grads", str(path), "--data", "builtin", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "--data builtin has 10 classes" in err and "trained for 3" in err
    assert not (tmp_path / "o").exists()
