"""``cspnet grads``: the paper's "duplicated gradient information" (Section 3.1), measured on a
baseline and its CSP variant side by side (:mod:`cspnet.analysis.grads` says what is measured)."""

from __future__ import annotations

import sys
from pathlib import Path

from .args import non_negative_int, positive_int

RUNS = Path("runs") / "grads"

DESCRIPTION = """\
Measure how much of the gradient a stage's shared tensor receives is the same information sent
back by several consumers: the paper's "duplicated gradient information" (CSPNet Section 3.1,
Eq. 1-4). In a dense block, layer k reads [x0, x1, ..., x_{k-1}], so dL/dx0 is the sum of one
contribution per dense layer (its gradient on the x0 channels of its input) plus the block
output's; the paper says the weights of every layer are updated from this same reused
gradient. For each stage, on its base tensor X (what the dense layers, the block output and, in
a CSP stage, the bypass read), each consumer's contribution is taken per sample (carried to X
through the split by autograd; the bypass's is what reaches X other than through the blocks),
and the command reports the per-sample cosine similarity of every pair of consumers averaged over
the samples (a heat map per stage), the mean over distinct pairs, and the duplicated share: the
cross terms' part of ||dL/dX||^2 (0 for orthogonal contributions, 1 - 1/K for K identical ones).
Residual stages: the consumers are the blocks' residual branches (their input gradients) and the
stage output. Gradients are a training step's: BatchNorm on batch statistics, dropout off,
cross-entropy on the labels. MODEL is a model name (measured at initialisation, seeded) or a
checkpoint / run directory; one name alone is measured beside its pair (cspX <-> X).
Writes grads.json and stageN.png to --out."""


def add_parser(sub) -> None:
    p = sub.add_parser("grads", help="measure the duplicated gradient information of a baseline and its CSP variant",
                       description=DESCRIPTION)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model names (at initialisation) or checkpoints / run directories")
    p.add_argument("--data", default=None, help="builtin (default), an ImageFolder dir with train/ and val/, a "
                                                "CIFAR python-batches dir, or torchvision:NAME:ROOT; a checkpoint "
                                                "defaults to the data it was trained on")
    p.add_argument("--batches", type=positive_int, default=8, help="batches of training images measured (default 8)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="default 16")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="input size for model names (default 32 for images up to 64 px, else 224); a checkpoint "
                        "keeps its own")
    p.add_argument("--seed", type=non_negative_int, default=0, help="weights of named models and batch order")
    p.add_argument("--alone", action="store_true", help="measure only the models given (no automatic pair)")
    p.add_argument("--out", default=None, help="output directory (default runs/grads/MODEL, numbered)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op CPU threads (default: torch's)")
    p.set_defaults(func=run)


def _pair(name: str) -> str | None:
    """The CSP variant of a baseline name or the baseline of a CSP name, when registered."""
    from ..models import list_models

    names = set(list_models())
    other = name[3:] if name.startswith("csp") else "csp" + name
    return other if other in names else None


def _resolve(items: list[str], alone: bool) -> list[dict]:
    """Each MODEL as {"label", "name" or "checkpoint", "meta"}; every one checked before any work."""
    from ..checkpoint import read_metadata
    from ..engine import resolve_checkpoint
    from ..models import get_entry

    specs = []
    for item in items:
        if Path(item).expanduser().exists():
            path = resolve_checkpoint(item)
            meta = read_metadata(path)
            if not meta.get("model"):
                raise ValueError(f"MODEL {item}: the checkpoint carries no cspnet metadata (model name)")
            specs.append({"label": f"{meta['model']} ({Path(item).name})", "model": meta["model"],
                          "checkpoint": str(path), "meta": meta})
        else:
            try:
                get_entry(item)
            except ValueError as e:
                raise ValueError(f"MODEL: {e} (or give a checkpoint / run directory)") from None
            specs.append({"label": item, "model": item, "checkpoint": None, "meta": {}})
    if len(specs) == 1 and not alone and specs[0]["checkpoint"] is None:
        other = _pair(specs[0]["model"])
        if other is None:
            raise ValueError(f"MODEL {items[0]!r} has no registered pair (csp{items[0]} or {items[0][3:]}); "
                             "give both models or add --alone")
        pair = {"label": other, "model": other, "checkpoint": None, "meta": {}}
        specs = sorted([specs[0], pair], key=lambda s: s["model"].startswith("csp"))  # baseline first
    return specs


def _data_for(spec: dict, args):
    """Training images (no augmentation) in the preprocessing this model needs."""
    from ..data import build_classify_data

    data_spec = args.data or spec["meta"].get("data") or "builtin"
    if spec["checkpoint"]:
        pre = spec["meta"].get("preprocess")
        data = build_classify_data(data_spec, preprocess=pre) if pre else build_classify_data(
            data_spec, args.img_size, spec["meta"].get("in_chans"))
    else:
        data = build_classify_data(data_spec, args.img_size)
    return data_spec, data


def _batches(data, args):
    import torch
    from torch.utils.data import DataLoader

    from ..data import collate
    from ..data.classify import ClassifySamples

    samples = ClassifySamples(data.train.source, data.val.transform, substitute=True)
    g = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(samples, batch_size=args.batch_size, shuffle=True, generator=g, collate_fn=collate,
                        drop_last=len(samples) >= args.batch_size)
    for i, batch in enumerate(loader):
        if i >= args.batches:
            break
        yield batch


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from ..analysis.grads import GradientProbe, measure, model_summary
    from ..checkpoint import atomic_write_json
    from ..engine.distributed import resolve_device
    from ..engine.runtime import seed_everything
    from ..models import create_model

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    specs = _resolve(args.models, args.alone)
    prepared = []
    for spec in specs:  # data and models first: a mismatch fails before any gradient is taken
        data_spec, data = _data_for(spec, args)
        seed_everything(args.seed)
        if spec["checkpoint"]:
            model = create_model(checkpoint=spec["checkpoint"])
            if model.num_classes != len(data.classes):
                raise ValueError(f"--data {data_spec} has {len(data.classes)} classes but {spec['checkpoint']} was "
                                 f"trained for {model.num_classes}; pass the data it was trained on")
        else:
            model = create_model(spec["model"], num_classes=len(data.classes), in_chans=data.in_chans)
        prepared.append((spec, data_spec, data, model))
    for *_, model in prepared:
        GradientProbe(model).close()  # a model with nothing to measure is refused here

    out = Path(args.out) if args.out else _numbered(RUNS / _safe("_vs_".join(s["model"] for s in specs)))
    out.mkdir(parents=True, exist_ok=True)
    report = {"batches": args.batches, "batch_size": args.batch_size, "seed": args.seed,
              "gradients": "training step: BatchNorm on batch statistics (running statistics unchanged), dropout "
                           "off, cross-entropy", "models": []}
    for spec, data_spec, data, model in prepared:
        bar = tqdm(total=args.batches, desc=f"grads {spec['label']}", disable=args.quiet, leave=False,
                   file=sys.stderr)

        def step(loss, bar=bar):
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}")

        stages = measure(model, _batches(data, args), device, progress=step)
        bar.close()
        if not stages:
            raise ValueError(f"MODEL {spec['label']}: no stage has two consumers of one tensor to compare")
        report["models"].append({
            "model": spec["model"], "label": spec["label"], "checkpoint": spec["checkpoint"], "data": data_spec,
            "img_size": data.preprocess["img_size"], "in_chans": data.in_chans, "summary": model_summary(stages),
            "stages": stages,
        })
        atomic_write_json(out / "grads.json", report)  # what is done so far is kept
    pngs = write_heatmaps(report, out)
    print(format_table(report))
    print(f"grads.json and {len(pngs)} heat map(s) in {out}")
    return 0


def _numbered(base: Path) -> Path:
    from .driver import _numbered_dir

    return _numbered_dir(base)


def _safe(text: str) -> str:
    from .driver import _safe_name

    return _safe_name(text)


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.1%}" if pct else f"{v:+.3f}"


def format_table(report: dict) -> str:
    """The per-stage summary, the models side by side: consumers, mean cosine among the block
    consumers, duplicated share of ||dL/dX||^2, the bypass's share."""
    models = report["models"]
    head = ["stage"] + [f"{m['label']}: K / cos / dup / bypass" for m in models]
    by_stage: dict[int, list] = {}
    for j, m in enumerate(models):
        for s in m["stages"]:
            by_stage.setdefault(s["stage"], [None] * len(models))[j] = s
    lines = [" | ".join(head)]
    for i in sorted(by_stage):
        cells = [str(i + 1)]
        for s in by_stage[i]:
            cells.append("-" if s is None else
                         f"{len(s['consumers'])} / {_fmt(s['mean_cos_blocks'])} / {_fmt(s['duplicated_share'], True)}"
                         f" / {_fmt(s['bypass_share'], True) if s['bypass_share'] is not None else '-'}")
        lines.append(" | ".join(cells))
    cells = ["mean"] + [f"{_fmt(m['summary']['mean_cos_blocks'])} / {_fmt(m['summary']['duplicated_share'], True)}"
                        for m in models]
    lines.append(" | ".join(cells))
    return "\n".join(lines)


def write_heatmaps(report: dict, out: Path, prefix: str = "stage") -> list[Path]:
    """One PNG per stage: each model's consumer x consumer similarity, side by side, on one colour
    scale set by the largest off-diagonal value (the diagonal, 1 by definition, is left grey)."""
    import numpy as np

    from ..plots import pyplot, save_figure

    plt = pyplot()
    models = report["models"]
    stages = sorted({s["stage"] for m in models for s in m["stages"]})
    paths = []
    for i in stages:
        found = [next((s for s in m["stages"] if s["stage"] == i), None) for m in models]
        mats = [None if s is None else np.array(s["similarity"], dtype=float) for s in found]
        for m in mats:
            if m is not None:
                np.fill_diagonal(m, np.nan)
        vmax = max([0.05] + [float(np.nanmax(np.abs(m))) for m in mats if m is not None and m.size > 1])
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="lightgrey")
        fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.2), squeeze=False)
        image = None
        for ax, m, s, mat in zip(axes[0], models, found, mats, strict=True):
            if s is None:
                ax.set_axis_off()
                ax.set_title(f"{m['label']}: not measured", fontsize=9)
                continue
            image = ax.imshow(mat, vmin=-vmax, vmax=vmax, cmap=cmap)
            names = s["consumers"]
            step = max(1, len(names) // 12)
            ticks = [k for k in range(len(names)) if k % step == 0 or names[k] in ("out", "bypass")]
            ax.set_xticks(ticks, [names[k] for k in ticks], rotation=90, fontsize=7)
            ax.set_yticks(ticks, [names[k] for k in ticks], fontsize=7)
            ax.set_title(f"{m['label']} stage {i + 1} ({s['fusion']})\nmean cos {_fmt(s['mean_cos_blocks'])}, "
                         f"duplicated {_fmt(s['duplicated_share'], True)}", fontsize=9)
        if image is not None:
            fig.colorbar(image, ax=axes[0, -1], shrink=0.8, label="per-sample cosine, mean over samples")
        path = out / f"{prefix}{i + 1}.png"
        save_figure(fig, path)
        paths.append(path)
    return paths
