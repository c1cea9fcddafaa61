"""``cspnet list`` and ``cspnet info``: what is in the zoo, and what a model costs."""

from __future__ import annotations

import torch

from .args import IMG_SIZE_HELP, img_size, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'csp*'")
    p.set_defaults(func=run_list)

    p = sub.add_parser("info", help="parameters, MACs, GFLOPs and feature levels of a model or darknet cfg")
    p.add_argument("model", nargs="?", help="model name (see `cspnet list`)")
    p.add_argument("--cfg", default=None, help="describe a darknet .cfg file instead (layers, shapes, BFLOPs)")
    p.add_argument("--img-size", type=img_size, default=None,
                   help="input size (default: the reference resolution, else 256; " + IMG_SIZE_HELP + ")")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="default: the model's (1000 for classifiers, 80 for detectors)")
    p.set_defaults(func=run_info)


def run_list(args) -> int:
    from ..models import get_entry, list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}")
    width = max(len(n) for n in names)
    for n in names:
        e = get_entry(n)
        print(f"{n:<{width}}  {e.family:<9} {e.description}".rstrip())
    return 0


def run_info(args) -> int:
    from ..bench.profile import profile
    from ..models import create_model, get_entry
    from ..models.spec import check_img_size

    if args.cfg is not None:
        if args.model is not None:
            raise ValueError("give either a model name or --cfg FILE, not both")
        from ..darknet import describe

        print(describe(args.cfg, args.img_size))
        return 0
    if args.model is None:
        raise ValueError("name a model (see `cspnet list`) or give --cfg FILE")
    entry = get_entry(args.model)
    ref = getattr(entry.cfg, "reference", None)
    size = args.img_size or (ref.img_size if ref else 256)
    with torch.device("meta"):
        model = create_model(args.model, num_classes=args.num_classes)
    check_img_size(model, size, divisible=False)  # the models run on odd sizes too: only the shared rule holds
    p = profile(model, size)
    print(f"model        {args.model}  ({entry.family} family)")
    print(f"input        3x{size}x{size}")
    print(f"params       {p.params / 1e6:.3f} M  (conv/fc weights only: {p.weights / 1e6:.3f} M)")
    print(f"MACs         {p.macs / 1e9:.3f} G")
    print(f"GFLOPs       {p.gflops:.3f}  (= 2 x MACs, darknet's BFLOPs)")
    if ref is not None:
        figs = []
        if ref.params is not None:
            figs.append(f"params {ref.params:.2f} M")
        if ref.weights is not None:
            figs.append(f"weights {ref.weights:.2f} M")
        figs.append(f"{ref.gflops:.3f} GFLOPs @ {ref.img_size}")
        if ref.top1 is not None:
            figs.append(f"top-1 {ref.top1}")
        print(f"reference    {', '.join(figs)}  [{ref.source}]")
    if "anchors" in model.feature_info[0]:  # a detector: its outputs
        print("outputs      level  channels  stride  anchors")
        for i, f in enumerate(model.feature_info):
            anchors = ", ".join(f"({w:g}, {h:g})" for w, h in f["anchors"])
            print(f"             {i:>5}  {f['num_chs']:>8}  {f['reduction']:>6}  {anchors}")
        return 0
    print("features     level  channels  stride  module")
    for i, f in enumerate(model.feature_info):
        print(f"             {i:>5}  {f['num_chs']:>8}  {f['reduction']:>6}  {f['module']}")
    return 0
