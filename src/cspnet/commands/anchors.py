"""``cspnet anchors``: k-means anchors for a detection data set (darknet's ``calc_anchors``, IoU
distance), and how well a detector's current anchors fit the same boxes."""

from __future__ import annotations

import sys

from .args import IMG_SIZE_HELP, img_size, positive_int


def add_parser(sub) -> None:
    from ..data import DETECT_SPEC_HELP
    from .recipes import RECIPES

    default_model = RECIPES["detect"].default_model
    p = sub.add_parser("anchors", help="k-means anchors for detection data, and how well a detector's anchors fit",
                       description="Cluster the training boxes' shapes (letterboxed to --img-size) with the "
                                   "1 - IoU distance; print the anchors (for --set anchors=...), their mean best "
                                   "IoU and the share of boxes they reach, beside the same figures for --model's.")
    p.add_argument("--data", default="builtin", help=f"default builtin; {DETECT_SPEC_HELP}")
    p.add_argument("--img-size", type=img_size, default=None, help="default: --model's input size; " + IMG_SIZE_HELP)
    p.add_argument("--n", type=positive_int, default=None, help="how many anchors (default: as many as --model has)")
    p.add_argument("--model", default=default_model, help=f"the detector whose anchors to check (default "
                                                          f"{default_model})")
    p.add_argument("--seed", type=int, default=0, help="k-means initialisation (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import load_detection_source
    from ..detection.anchors import RECALL_IOU, anchor_fit, box_shapes, format_anchors, kmeans_anchors
    from ..detection.zoo import detector_cfg

    cfg = detector_cfg(args.model)
    size = args.img_size or cfg.img_size
    source = load_detection_source(args.data, splits=("train",))
    if source.num_warnings:
        print(f"warning: {source.summary()}", file=sys.stderr)
    wh = box_shapes(source.train, size)
    n = args.n or len(cfg.anchors)
    new = kmeans_anchors(wh, n, seed=args.seed)
    current = cfg.used_anchors()
    print(f"{len(wh)} training boxes of {args.data} at {size} px; a box is reachable when an anchor's shape IoU "
          f"with it is >= {RECALL_IOU}")
    for what, anchors in ((f"{args.model}'s anchors", current), (f"k-means, {n} anchors", new)):
        fit = anchor_fit(wh, anchors)
        print(f"  {what:<32} mean best IoU {fit.mean_iou:.3f}  reachable {fit.recall:.1%}")
    if n != len(cfg.anchors):
        print(f"(--model has {len(cfg.anchors)} anchors; --set anchors=... must give as many)")
    print(f"--set anchors={format_anchors(new)}")
    return 0
