"""``cspnet ablate`` (the paper's Table 1) and the width/depth scaling every variant shares."""

from __future__ import annotations

import csv
import json

import pytest

import cspnet
from cspnet.bench.profile import count_params, profile
from cspnet.cli import main
from cspnet.commands import ablate
from cspnet.models import get_config
from cspnet.models.config import scale_config

TINY = ["--family", "peleenet", "--epochs", "1", "--img-size", "32", "--width-mult", "0.25", "--depth-mult", "0.5",
        "--gammas", "0.5", "--fusions", "last", "--seeds", "1", "--rounds", "2", "--threads", "1", "--quiet"]


# --- width/depth scaling --------------------------------------------------------------------


def test_scale_config_scales_every_channel_count_and_depth():
    cfg = get_config("peleenet")
    half = scale_config(cfg, 0.5, 0.5)
    assert [st.out_chs for st in half.stages] == [64, 128, 256, 352]
    assert [st.bottleneck_chs for st in half.stages] == [8, 16, 32, 32]
    assert [st.depth for st in half.stages] == [2, 2, 4, 3]  # 3,4,8,6 halved, half rounded up
    assert (half.growth, half.stem_chs) == (16, 16)
    assert half.reference is None and cfg.reference is not None
    assert scale_config(cfg, 1, 1) is cfg


def test_width_mult_override_shrinks_params_about_quadratically():
    full = count_params(cspnet.create_model("csppeleenet", num_classes=10))[0]
    half = count_params(cspnet.create_model("csppeleenet", num_classes=10, width_mult=0.5))[0]
    assert 0.2 < half / full < 0.3  # convs scale with width squared; BN, biases and the head linearly
    # the gamma/fusion of a variant survive the scaling, and the same override reaches every variant
    cfg = get_config("csppeleenet", gamma=0.25, fusion="last", width_mult=0.5)
    assert [(st.gamma, st.fusion) for st in cfg.stages[:3]] == [(0.25, "last")] * 3
    assert cfg.stages[3].fusion == "none"


def test_grouped_stages_keep_their_group_width():
    cfg = get_config("cspresnext50", width_mult=0.25)
    assert [st.groups for st in cfg.stages] == [8] * 4
    assert [st.out_chs for st in cfg.stages] == [64, 128, 256, 512]
    cspnet.create_model("cspresnext50", num_classes=10, width_mult=0.25, depth_mult=0.4)  # builds


def test_width_that_rounds_a_stage_to_zero_is_refused():
    with pytest.raises(ValueError, match=r"width_mult=0.01 rounds stage 0 bottleneck_chs \(16\) to 0 channels; "
                                         r"use width_mult >= 0.032$"):
        get_config("peleenet", width_mult=0.01)
    cfg = get_config("peleenet", width_mult=0.032)  # the suggested smallest width keeps one channel
    assert cfg.stages[0].bottleneck_chs == 1
    with pytest.raises(ValueError, match=r"depth_mult=0 must be a number > 0"):
        get_config("peleenet", depth_mult=0)


# --- bad input: one line naming the option, before any training -------------------------------


@pytest.mark.parametrize("change, expected", [
    (("--family", "vgg"), "--family vgg is unknown; allowed: peleenet, resnet, resnext, darknet, densenet"),
    (("--gammas", "0.5,1.0"), "--gammas 0.5,1.0: 1 is outside (0, 1)"),
    (("--gammas", "0"), "--gammas 0: 0 is outside (0, 1)"),
    (("--gammas", "half"), "--gammas half: 'half' is not a number"),
    (("--fusions", "last,middle"), "--fusions last,middle: unknown fusion 'middle'; allowed: first, last, full"),
    (("--width-mult", "0.01"), "--width-mult 0.01: peleenet cannot be built at this size: width_mult=0.01 rounds "
                               "stage 0 bottleneck_chs (16) to 0 channels; use width_mult >= 0.032"),
    (("--seeds", "0"), "--seeds 0 must be a whole number >= 1"),
])
def test_bad_input_is_one_line_naming_the_option(tmp_path, capsys, monkeypatch, change, expected):
    calls = []
    monkeypatch.setattr(ablate, "train_run", lambda argv: calls.append(argv) or 0)
    argv = list(TINY)
    if change[0] in argv:
        i = argv.index(change[0])
        argv[i + 1] = change[1]
        if change[0] == "--width-mult":
            argv[argv.index("--depth-mult") + 1] = "1"
    status = main(["ablate", *argv, "--out", str(tmp_path / "abl")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"cspnet ablate: error: {expected}")
    assert err.count("\n") == 1
    assert calls == [] and not (tmp_path / "abl").exists()  # refused before anything ran or was written


def test_a_pair_the_model_cannot_take_is_refused_before_training(tmp_path, capsys):
    # cspdarknet53's first stage doubles its width for the CSP split: fusion last needs gamma < 0.5 there
    status = main(["ablate", "--family", "darknet", "--gammas", "0.5", "--fusions", "last", "--width-mult", "0.125",
                   "--depth-mult", "0.25", "--out", str(tmp_path / "abl")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("cspnet ablate: error: --gammas 0.5 --fusions last: cspdarknet53 with gamma=0.5, "
                          "fusion='last' cannot be built: ")
    assert not (tmp_path / "abl").exists()


# --- a tiny ablation end to end ---------------------------------------------------------------


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_ablation_end_to_end_resumes_and_only_rewrites(tmp_path, capsys, monkeypatch):
    out = tmp_path / "abl"
    calls = []
    real = ablate.train_run
    monkeypatch.setattr(ablate, "train_run", lambda argv: calls.append(argv) or real(argv))

    assert main(["ablate", *TINY, "--out", str(out)]) == 0
    assert len(calls) == 2
    base_dir, csp_dir = out / "runs" / "peleenet" / "seed0", out / "runs" / "csppeleenet-last-g0.5" / "seed0"
    assert {c[c.index("--out") + 1] for c in calls} == {str(base_dir), str(csp_dir)}
    variant_call = next(c for c in calls if str(csp_dir) in c)
    assert ["--set", 'gamma=0.5'] == variant_call[variant_call.index("--set"):][:2]
    assert 'fusion="last"' in variant_call and "width_mult=0.25" in variant_call and "depth_mult=0.5" in variant_call

    # the CSV: one row per run, with the run's own metrics
    rows = _read_csv(out / "runs.csv")
    assert [(r["variant"], r["fusion"], r["gamma"], r["seed"]) for r in rows] == [
        ("peleenet", "none", "", "0"), ("csppeleenet-last-g0.5", "last", "0.5", "0")]
    for row, run_dir in zip(rows, (base_dir, csp_dir), strict=True):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert float(row["top1"]) == pytest.approx(metrics["top1"])
        assert float(row["wall_s"]) == pytest.approx(metrics["wall_s"], abs=0.05)

    # costs of the trained models, counted independently, and the deltas against the baseline
    models = [cspnet.create_model(checkpoint=str(d / "best.safetensors")) for d in (base_dir, csp_dir)]
    assert models[0].in_chans == 1 and models[1].cfg.stages[0].fusion == "last"
    base_p, csp_p = (profile(m, 32) for m in models)
    assert float(rows[0]["params_m"]) == pytest.approx(base_p.params / 1e6, abs=1e-6)
    assert float(rows[1]["gflops"]) == pytest.approx(csp_p.gflops, abs=1e-6)
    assert base_p.params == count_params(cspnet.create_model("peleenet", num_classes=10, in_chans=1,
                                                             width_mult=0.25, depth_mult=0.5))[0]
    d_params = 100 * (csp_p.params / base_p.params - 1)
    d_gflops = 100 * (csp_p.gflops / base_p.gflops - 1)
    top1 = [float(r["top1"]) for r in rows]
    report = (out / "report.md").read_text()
    line = next(ln for ln in report.splitlines() if ln.startswith("| csppeleenet | 0.5 | last |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4] == f"{d_params:+.1f}%" and cells[6] == f"{d_gflops:+.1f}%"
    assert d_gflops < 0 and d_params < 0  # fusion last drops the final transition: cheaper on both counts
    assert cells[7] == f"{top1[1]:.2f} ± 0.00" and cells[8] == f"{top1[1] - top1[0]:+.1f}"
    assert float(cells[10]) > 0  # a measured latency
    assert "width multiplier 0.25, depth multiplier 0.5" in report and "CPU flags:" in report
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second invocation trains nothing and rewrites the report
    (out / "report.md").unlink()
    calls.clear()
    assert main(["ablate", *TINY, "--out", str(out)]) == 0
    assert calls == [] and (out / "report.md").is_file()
    assert "0 run(s) trained, 2 already finished" in capsys.readouterr().out
    assert _read_csv(out / "runs.csv") == rows

    # a run that lost its metrics.json (killed after its last epoch) is the only one run again: resumed
    (csp_dir / "metrics.json").unlink()
    assert main(["ablate", *TINY, "--out", str(out)]) == 0
    assert len(calls) == 1 and calls[0][:3] == ["--resume", "--out", str(csp_dir)]
    assert [float(r["top1"]) for r in _read_csv(out / "runs.csv")] == pytest.approx(top1)  # same weights

    # a partial report of a larger ablation: the finished runs, and what is missing
    calls.clear()
    argv = list(TINY)
    argv[argv.index("--seeds") + 1] = "2"
    assert main(["ablate", *argv, "--partial", "--rounds", "0", "--out", str(out)]) == 0
    assert calls == []
    assert ("**Partial report**: 2 of 4 runs finished; missing: peleenet seed 1, csppeleenet-last-g0.5 seed 1"
            in (out / "report.md").read_text())

    # another recipe on the same OUT is refused: its runs would not compare
    argv = list(TINY)
    argv[argv.index("--epochs") + 1] = "2"
    assert main(["ablate", *argv, "--out", str(out)]) == 2
    assert f"--out {out} holds an ablation with epochs=1, not 2" in capsys.readouterr().err
    assert calls == []


def test_partial_report_needs_a_finished_baseline(tmp_path, capsys):
    assert main(["ablate", *TINY, "--partial", "--out", str(tmp_path / "abl")]) == 2
    assert "holds no ablation yet" in capsys.readouterr().err


def test_each_run_is_started_resumed_or_kept_by_what_its_directory_holds(tmp_path):
    from cspnet.analysis.ablate import Recipe, plan_runs, plan_variants, train_argv

    recipe = Recipe("peleenet", epochs=2, width_mult=0.5)
    variants = plan_variants("peleenet", (0.25,), ("first",))
    runs = plan_runs(tmp_path, variants, 2)
    assert [(r.variant.key, r.seed) for r in runs] == [  # seed by seed: a stopped ablation has every variant
        ("peleenet", 0), ("csppeleenet-first-g0.25", 0), ("peleenet", 1), ("csppeleenet-first-g0.25", 1)]
    run = runs[1]
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "results.csv").write_text("epoch\n")  # killed before its first epoch ended: started again
    argv = train_argv(run, recipe, threads=1, device="cpu", quiet=True)
    assert argv[:8] == ["--model", "csppeleenet", "--data", "builtin", "--seed", "0", "--out", str(run.run_dir)]
    assert "--resume" not in argv and ["--epochs", "2"] == argv[8:10]
    assert argv[argv.index("--set"):argv.index("--threads")] == [
        "--set", "gamma=0.25", "--set", 'fusion="first"', "--set", "width_mult=0.5"]  # depth 1: not passed
    (run.run_dir / "last.state.pt").write_bytes(b"")
    assert train_argv(run, recipe, threads=1, device="cpu", quiet=True) == [
        "--resume", "--out", str(run.run_dir), "--threads", "1", "--device", "cpu", "--quiet"]
    assert not run.finished
    (run.run_dir / "metrics.json").write_text("{}")
    assert run.finished
