"""The detectors without a cfg: the EFM and GFM fusion necks (which levels each output reads, Maxout
before the route), darknet's [sam] on any neck, PRN on three levels, the registered rows' sizes (held
against docs/reconstructions-detection.md) and the Maxout memory measure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import cspnet
from cspnet.bench.profile import profile
from cspnet.checkpoint import save_checkpoint
from cspnet.convert.darknet import native_units
from cspnet.detection.fusion import EFM, GFM, AttentionNeck
from cspnet.detection.memory import activation_memory, maxout_saving
from cspnet.detection.necks import PRN, PANet
from cspnet.layers.pyramid import Maxout

DOC = Path(__file__).resolve().parents[1] / "docs" / "reconstructions-detection.md"
ROWS = ["csppeleenet_efm", "csppeleenet_efm_sam", "csppeleenet_efm_spp", "csppeleenet_gfm", "csppeleenet_prn",
        "csppeleenet_ref_prn3l", "csppeleenet_ref_efm_sam", "cspdensenet_ref_prn", "cspdensenet_b_ref_prn",
        "peleenet_prn", "peleenet_prn3l"]
CHS, SIZES = [8, 16, 16, 32], [32, 16, 8, 4]  # four levels, strides 2x apart


def _feats(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, s, s, generator=g) for c, s in zip(CHS, SIZES, strict=True)]


def _changed(neck, level):
    """The outputs that change when only backbone level ``level`` changes."""
    neck.eval()
    feats = _feats()
    moved = [f.clone() for f in feats]
    moved[level] += torch.randn(moved[level].shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a, b = neck(feats), neck(moved)
    return {i for i, (x, y) in enumerate(zip(a, b, strict=True)) if not torch.allclose(x, y)}


@pytest.mark.parametrize("kwargs", [{}, {"down": "conv"}, {"spp": True}, {"maxout": 1}, {"depth": 3}])
def test_efm_output_s_reads_levels_s_minus_1_to_s_plus_1_only(kwargs):
    """The fusion is "exact": perturbing level j moves the outputs j-1, j, j+1 and no other."""
    torch.manual_seed(0)
    neck = EFM(CHS, [8, 8, 8, 8], **kwargs)
    for j in range(4):
        assert _changed(neck, j) == {i for i in range(4) if abs(i - j) <= 1}, j


def test_gfm_outputs_read_every_level():
    torch.manual_seed(0)
    neck = GFM(CHS, [8, 8, 8, 8])
    assert [_changed(neck, j) for j in range(4)] == [{0, 1, 2, 3}] * 4
    assert [f.sources for f in neck.fuse] == [[0, 1, 2, 3]] * 4


@pytest.mark.parametrize("kind", [EFM, GFM])
def test_fusion_outputs_are_at_each_levels_resolution_fine_to_coarse(kind):
    neck = kind(CHS, [4, 8, 8, 16], depth=1).eval()
    with torch.no_grad():
        outs = neck(_feats())
    assert [tuple(o.shape) for o in outs] == [(2, w, s, s) for w, s in zip([4, 8, 8, 16], SIZES, strict=True)]
    assert neck.out_chs == [4, 8, 8, 16] and neck.output_levels() == [0, 1, 2, 3]
    odd = [torch.randn(1, c, h, w) for c, h, w in zip(CHS, [25, 13, 7, 4], [26, 13, 7, 4], strict=True)]  # ceil
    with torch.no_grad():
        assert [o.shape[-2:] for o in neck(odd)] == [f.shape[-2:] for f in odd]


def test_maxout_compresses_each_feature_before_the_route():
    neck = EFM(CHS, [8, 8, 8, 8], maxout=2).eval()
    feats = _feats()
    with torch.no_grad():
        fused = neck.pyramid(feats)
    # output 0 routes [level 0, up(level 1)], each compressed to half its channels
    assert [f.shape[1] for f in fused] == [4 + 8, 4 + 8 + 8, 8 + 8 + 16, 8 + 16]
    assert [f.fused_chs for f in neck.fuse] == [f.shape[1] for f in fused]
    b, c, h, w = feats[0].shape
    torch.testing.assert_close(fused[0][:, :4], feats[0].view(b, c // 2, 2, h, w).amax(2))
    assert isinstance(neck.compress, Maxout) and neck.compress.groups == 2
    plain = EFM(CHS, [8, 8, 8, 8], maxout=1)
    assert [f.fused_chs for f in plain.fuse] == [8 + 16, 8 + 16 + 16, 16 + 16 + 32, 16 + 32]
    quarter = EFM(CHS, [8, 8, 8, 8], maxout=4)
    assert [f.fused_chs for f in quarter.fuse] == [2 + 4, 2 + 4 + 4, 4 + 4 + 8, 4 + 8]


def test_sam_multiplies_each_output_by_a_sigmoid_gate():
    """A gate conv with zero weights: BN(0) = 0 in eval with fresh statistics, so the gate is 0.5."""
    torch.manual_seed(0)
    neck = AttentionNeck(EFM(CHS, [8, 8, 8, 8])).eval()
    for sam in neck.sam:
        torch.nn.init.zeros_(sam.gate.conv.weight)
    with torch.no_grad():
        for gated, plain in zip(neck(_feats()), neck.base(_feats()), strict=True):
            torch.testing.assert_close(gated, plain * 0.5)
    assert neck.darknet_order()[:3] == ["base.fuse.0", "sam.0", "head.0"]


def test_prn_generalises_to_three_levels():
    """PRN (3l): top-down partial residual steps down to stride 8; outputs coarse to fine."""
    neck = PRN([8, 16, 32], [8, 8, 16]).eval()
    with torch.no_grad():
        outs = neck([torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)])
    assert [tuple(o.shape[1:]) for o in outs] == [(16, 4, 4), (8, 8, 8), (8, 16, 16)]
    assert neck.out_chs == [16, 8, 8] and neck.output_levels() == [2, 1, 0]
    assert neck.darknet_order() == ["top", "head.0", "steps.0", "head.1", "steps.1", "head.2"]


def test_bad_fusion_arguments_raise_one_line_errors():
    for kwargs, message in [({"maxout": 0}, "maxout=0 must be a positive integer"),
                            ({"maxout": 3}, r"maxout=3 must divide every fused feature's channels; got \[8, 16"),
                            ({"down": "avg"}, "down='avg' is not allowed; choose one of pool, conv")]:
        with pytest.raises(ValueError, match=message):
            EFM(CHS, [8, 8, 8, 8], **kwargs)
    with pytest.raises(ValueError, match="attention='cbam' is not allowed; choose one of none, sam"):
        cspnet.create_model("csppeleenet_tiny_efm", attention="cbam")
    with pytest.raises(ValueError, match="neck='bifpn' is not allowed; choose one of panet, fpn, prn, efm, gfm"):
        cspnet.create_model("csppeleenet_tiny_efm", neck="bifpn")


@pytest.mark.parametrize("name,overrides,neck", [
    ("csppeleenet_tiny_efm", {"attention": "sam"}, "AttentionNeck"),
    ("csppeleenet_tiny_efm", {"spp": True, "down": "conv"}, "EFM"),
    ("csppeleenet_tiny_gfm", {}, "GFM"),
    ("cspresnext_tiny_panet", {"neck": "efm"}, "EFM"),  # PANet's spp=True, depth=5 carry over
    ("cspresnext_tiny_panet", {"neck": "gfm", "attention": "sam"}, "AttentionNeck"),
    ("cspresnext_tiny_panet", {"attention": "sam"}, "AttentionNeck"),
    ("cspdarknet_tiny_prn", {"attention": "sam"}, "AttentionNeck"),
])
def test_neck_options_build_and_run_on_any_backbone(name, overrides, neck):
    torch.manual_seed(0)
    model = cspnet.create_model(name, num_classes=3, **overrides).eval()
    assert type(model.neck).__name__ == neck and model.cfg.reference is None
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 96, 64))
    assert [o.shape for o in outs] == [(1, 3 * 8, 96 // s, 64 // s) for s in model.strides]
    assert len(native_units(model)) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize("name", ["csppeleenet_tiny_efm", "csppeleenet_tiny_gfm"])
def test_tiny_fusion_detectors_round_trip_a_checkpoint(name, tmp_path):
    torch.manual_seed(0)
    model = cspnet.create_model(name, num_classes=2).eval()
    assert model.strides == [8, 16, 32] and model.img_size == 128
    x = torch.randn(1, 3, 64, 96)
    save_checkpoint(model, tmp_path / "d.safetensors")
    again = cspnet.create_model(checkpoint=str(tmp_path / "d.safetensors")).eval()
    with torch.no_grad():
        for a, b in zip(model(x), again(x), strict=True):
            torch.testing.assert_close(a, b)


def test_predict_runs_on_a_tiny_efm_detector():
    model = cspnet.create_model("csppeleenet_tiny_efm", num_classes=2)
    dets = model.predict([torch.rand(3, 100, 140), torch.rand(3, 64, 64)], conf=0.0, max_det=5)
    assert len(dets) == 2
    for det in dets:
        assert det["boxes"].shape == (5, 4) and det["scores"].shape == (5,) and det["labels"].max() < 2


def _doc_rows():
    """The doc's figure table: (model, overrides, params M, weights M, GFLOPs at 320)."""
    rows = []
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `(\w+)` \| ([^|]*)\| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            rows.append((m[1], eval(f"dict({m[2].strip().strip('`')})"), m[3], m[4], m[5]))
    return rows


def test_the_doc_lists_every_registered_row():
    listed = {name for name, overrides, *_ in _doc_rows() if not overrides}
    assert set(ROWS) <= listed and {"csppeleenet_tiny_efm", "csppeleenet_tiny_gfm"} <= set(cspnet.list_models())


@pytest.mark.parametrize("row", _doc_rows(), ids=lambda r: f"{r[0]}{'+' if r[1] else ''}{','.join(r[1])}")
def test_params_and_gflops_at_320_equal_the_doc(row):
    name, overrides, params, weights, gflops = row
    with torch.device("meta"):
        model = cspnet.create_model(name, **overrides)
    p = profile(model, 320)
    assert (f"{p.params / 1e6:.4f}", f"{p.weights / 1e6:.4f}", f"{p.gflops:.4f}") == (params, weights, gflops)
    assert model.img_size == 320


@pytest.mark.parametrize("name,weights,gflops,size,gap_weights,gap_gflops", [
    # PRN README: Pelee-PRN 320: 3.16M, 2.39 B (416: 4.04); Pelee-PRN-3l 320: 3.36M, 3.98 B (416: 5.03)
    ("peleenet_prn", 3.16, 2.39, 320, -0.0077, -0.0011),
    ("peleenet_prn", 3.16, 4.04, 416, -0.0077, -0.0014),
    ("peleenet_prn3l", 3.36, 5.03, 416, -0.0083, +0.0001),
    ("peleenet_prn3l", 3.36, 3.98, 320, -0.0083, -0.2521),  # the README's 320 figure: not its 416 one scaled
])
def test_pelee_prn_gaps_to_the_prn_readme(name, weights, gflops, size, gap_weights, gap_gflops):
    with torch.device("meta"):
        model = cspnet.create_model(name)
    p = profile(model, size)
    assert p.weights / 1e6 / weights - 1 == pytest.approx(gap_weights, abs=5e-5)
    assert p.gflops / gflops - 1 == pytest.approx(gap_gflops, abs=5e-5)
    assert 3.98 * (416 / 320) ** 2 == pytest.approx(6.73, abs=0.01)  # vs 5.03: the two README figures disagree


def test_every_registered_row_lists_its_convs_in_darknet_order():
    for name in ROWS:
        with torch.device("meta"):
            model = cspnet.create_model(name)
        units = native_units(model)  # raises if a conv is in no listed part
        assert len(units) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()), name
        order = [u.name.split(".")[0] if u.name.startswith("head") else "neck" for u in units if
                 not u.name.startswith("backbone")]
        assert order[-1] == "head" and order[0] == "neck", name


def test_activation_memory_counts_live_created_tensors():
    x = torch.randn(1000)  # 4000 bytes, an input: not counted

    def two_temporaries(t):
        a = t * 2
        b = a + 1  # a and b alive together
        del a
        return b * 3  # b and the result alive together

    m = activation_memory(two_temporaries, x)
    assert (m.peak_bytes, m.total_bytes) == (8000, 12000)
    view = activation_memory(lambda t: t.view(10, 100)[:5], x)  # views of the input create nothing
    assert (view.peak_bytes, view.total_bytes) == (0, 0)
    with pytest.raises(ValueError, match="needs real tensors"):
        activation_memory(lambda t: t * 2, torch.empty(3, device="meta"))


def test_maxout_lowers_the_memory_of_the_feature_pyramid():
    saving = maxout_saving("csppeleenet_tiny_efm", img_size=128)
    for part in ("neck", "pyramid"):
        with_, without = getattr(saving, part)
        assert 0 < with_.peak_bytes < without.peak_bytes and with_.total_bytes < without.total_bytes
    assert saving.ratio("pyramid") < 0.7 and saving.ratio("pyramid", "total_bytes") < 0.65
    stronger = maxout_saving("csppeleenet_tiny_efm", img_size=128, maxout=4)
    assert stronger.ratio("pyramid") < saving.ratio("pyramid")
    with pytest.raises(ValueError, match="has no Maxout fusion neck"):
        maxout_saving("cspdarknet_tiny_prn", img_size=64)


def test_panet_is_unchanged_by_the_fusion_options():
    """maxout and down are EFM/GFM options; PANet's structure (and its cfg match) does not move."""
    a, b = cspnet.create_model("cspresnext_tiny_panet"), cspnet.create_model("cspresnext_tiny_panet", maxout=4)
    assert isinstance(a.neck, PANet) and profile(a, 64).params == profile(b, 64).params
