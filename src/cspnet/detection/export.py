"""A detector's ONNX export with the decode (and optionally NMS) in the graph, checked in ONNX
Runtime and OpenCV DNN against PyTorch.

:class:`DecodedDetector` is the exported form: the raw head maps (kept as outputs so each engine's
convolutions can be checked on their own), then ``boxes`` (B, N, 4) xyxy in input pixels and
``scores`` (B, N, C) = objectness x class probability, one row per anchor of every output in
:meth:`Detector.decode`'s order. The decode is written for a fixed input size: the grid offsets,
cell sizes and anchors are constants, so the graph is Reshape/Transpose/Slice/Sigmoid/Exp and
element-wise ops on tensors of at most 4 dimensions, which both engines import (the batch may stay
dynamic: every reshape keeps it as -1).

With ``nms=True`` the graph ends with ONNX ``NonMaxSuppression`` (class-wise, as
``Detector.predict``) and fixed-shape outputs ``num_dets`` (B,), ``det_boxes`` (B, K, 4),
``det_scores`` (B, K), ``det_labels`` (B, K) (K = ``max_det``; rows past ``num_dets`` are zero with
label -1). In PyTorch it is a custom op (``cspnet::padded_nms``, torchvision's ``batched_nms``),
written to ONNX by a translation that emits NonMaxSuppression, ScatterND and TopK.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ..checkpoint import atomic_write_bytes
from ..errors import first_line
from ..inference import export as engines_mod
from ..inference.export import (
    DEFAULT_OPSET,
    ENGINES,
    check_opset,
    check_output_path,
    prepare_for_export,
    simplify_onnx,
    to_onnx_bytes,
)
from .detector import Detector, check_thresholds

RAW, DECODED = "raw", "decode"
NMS_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_labels")
NMS_OPTIONAL_ENGINES = ("opencv",)  # engines whose DNN module may lack NonMaxSuppression (OpenCV 4.x)


# --- NMS as one fixed-shape op -------------------------------------------------------------------


@torch.library.custom_op("cspnet::padded_nms", mutates_args=())
def padded_nms(boxes: Tensor, scores: Tensor, max_det: int, iou: float, conf: float
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class-wise NMS per image with fixed-shape, padded outputs (what the ONNX graph returns).

    A candidate is a (box, class) pair with score over ``conf`` (``Detector.predict``'s rule: the
    objectness test it also makes is implied, a class probability being at most 1); boxes of one
    class overlapping by IoU over ``iou`` are suppressed; the best ``max_det`` remain."""
    b = boxes.shape[0]
    num = torch.zeros(b, dtype=torch.int64, device=boxes.device)
    out_boxes = boxes.new_zeros(b, max_det, 4)
    out_scores = scores.new_zeros(b, max_det)
    out_labels = torch.full((b, max_det), -1, dtype=torch.int64, device=boxes.device)
    for i in range(b):
        box_idx, labels = (scores[i] > conf).nonzero(as_tuple=True)
        s, bx = scores[i][box_idx, labels], boxes[i][box_idx]
        keep = batched_nms(bx, s, labels, iou)[:max_det]
        n = keep.numel()
        num[i] = n
        out_boxes[i, :n], out_scores[i, :n], out_labels[i, :n] = bx[keep], s[keep], labels[keep]
    return num, out_boxes, out_scores, out_labels


@padded_nms.register_fake
def _(boxes, scores, max_det, iou, conf):
    b = boxes.shape[0]
    return (boxes.new_empty(b, dtype=torch.int64), boxes.new_empty(b, max_det, 4), scores.new_empty(b, max_det),
            boxes.new_empty(b, max_det, dtype=torch.int64))


def _padded_nms_onnx(boxes, scores, max_det: int, iou: float, conf: float):
    """ONNX for :func:`padded_nms`: NonMaxSuppression picks (image, class, box) triples; their scores
    are scattered into a zero (B, C, N + 1) map whose TopK over C * (N + 1) gives the best
    ``max_det`` across classes (a kept score exceeds ``conf`` >= 0, so zero marks padding).

    The extra box column (zero scores, a zero box) takes one sentinel triple, so the gathers and the
    scatter never see an empty selection: OpenCV DNN 5.0 dies of SIGFPE in GatherND on no indices."""
    from onnxscript import opset18 as op

    n = boxes.shape[1]
    if not isinstance(n, int):
        raise ValueError("the NMS needs a fixed number of boxes per image")
    zero, last = op.Constant(value_float=0.0), op.Constant(value_ints=[-1])
    per_class = op.Transpose(scores, perm=[0, 2, 1])  # (B, C, N), as NonMaxSuppression reads scores
    picked = op.NonMaxSuppression(boxes, per_class, op.Constant(value_ints=[max_det]),
                                  op.Constant(value_floats=[iou]), op.Constant(value_floats=[conf]))
    sentinel = op.Unsqueeze(op.Constant(value_ints=[0, 0, n]), op.Constant(value_ints=[0]))
    picked = op.Concat(picked, sentinel, axis=0)
    first_col = op.Slice(per_class, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), last)
    padded = op.Concat(per_class, op.Mul(first_col, zero), axis=2)  # (B, C, N + 1)
    kept = op.ScatterND(op.Mul(padded, zero), picked, op.GatherND(padded, picked))
    best, flat_idx = op.TopK(op.Reshape(kept, op.Constant(value_ints=[0, -1])), op.Constant(value_ints=[max_det]),
                             axis=-1, largest=1, sorted=1)
    valid = op.Greater(best, zero)
    first_box = op.Slice(boxes, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[1]))
    all_boxes = op.Concat(boxes, op.Mul(first_box, zero), axis=1)  # (B, N + 1, 4)
    width = op.Constant(value_ints=[n + 1])
    det_boxes = op.GatherND(all_boxes, op.Unsqueeze(op.Mod(flat_idx, width), last), batch_dims=1)
    det_boxes = op.Where(op.Unsqueeze(valid, last), det_boxes, zero)
    labels = op.Where(valid, op.Div(flat_idx, width), op.Constant(value_ints=[-1]))
    num = op.ReduceSum(op.Cast(valid, to=7), op.Constant(value_ints=[1]), keepdims=0)  # 7: INT64
    return num, det_boxes, best, labels


def translation_table() -> dict:
    """What ``torch.onnx.export(custom_translation_table=...)`` needs for a graph with NMS."""
    return {torch.ops.cspnet.padded_nms.default: _padded_nms_onnx}


# --- the exported form -----------------------------------------------------------------------------


def _pair(img_size) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))



class DecodedDetector(nn.Module):
    """``detector`` with its decode (and, with ``nms``, class-wise NMS) as graph ops, at a fixed
    ``img_size`` (int or (h, w), a multiple of the largest stride; default the detector's).

    ``forward`` returns ``(*raw_maps, boxes, scores)`` and, with ``nms``, also ``num_dets``,
    ``det_boxes``, ``det_scores``, ``det_labels`` (:attr:`output_names` names them). ``max_det`` is
    capped at N * C, the number of candidates."""

    def __init__(self, detector: Detector, img_size=None, nms: bool = False, conf: float = 0.25,
                 iou: float = 0.45, max_det: int = 300):
        super().__init__()
        size = detector.img_size if img_size is None else img_size
        (h, w), stride = _pair(size), max(detector.strides)
        for dim in (h, w):
            detector._check_size(dim)
        if len({bool(hd.new_coords) for hd in detector.heads}) > 1:
            raise ValueError("a detector whose outputs mix new_coords=0 and 1 cannot be exported with its decode")
        check_thresholds(conf, iou, max_det)
        self.detector, self.img_size, self.stride = detector, (h, w), stride
        self.nms, self.conf, self.iou = bool(nms), float(conf), float(iou)
        self.new_coords = bool(detector.heads[0].new_coords)
        self.num_classes = detector.num_classes
        self.layout = []  # per output: (anchors, grid h, grid w)
        grid, cell, anchors, scale = [], [], [], []
        for head, s in zip(detector.heads, detector.strides, strict=True):
            gh, gw, a = h // s, w // s, head.num_anchors
            self.layout.append((a, gh, gw))
            rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                                        indexing="ij")
            grid.append(torch.stack([cols, rows], -1).reshape(1, gh * gw, 2).expand(a, -1, -1).reshape(-1, 2))
            cell.append(torch.tensor([w / gw, h / gh]).expand(a * gh * gw, 2))
            anchors.append(torch.tensor(head.anchors, dtype=torch.float32).repeat_interleave(gh * gw, 0))
            scale.append(torch.full((a * gh * gw, 1), float(head.scale_x_y)))
        # constants of the fixed input size; not state (a checkpoint never holds them)
        self.register_buffer("grid", torch.cat(grid)[None], persistent=False)
        self.register_buffer("cell", torch.cat(cell)[None], persistent=False)
        self.register_buffer("anchors", torch.cat(anchors)[None], persistent=False)
        scale = torch.cat(scale)[None]
        self.scaled = bool((scale != 1).any())
        self.register_buffer("xy_scale", scale, persistent=False)
        self.num_boxes = self.grid.shape[1]
        self.max_det = min(int(max_det), self.num_boxes * self.num_classes)

    @property
    def output_names(self) -> list[str]:
        names = [f"raw{i}" for i in range(len(self.layout))] + ["boxes", "scores"]
        return names + list(NMS_OUTPUTS) if self.nms else names

    def decode(self, raws: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Raw maps -> (boxes (B, N, 4) xyxy pixels, scores (B, N, C)), as :func:`yolo_decode.decode`."""
        c = 5 + self.num_classes
        # (B, A*(5+C), H, W) -> (B, A*H*W, 5+C), anchor-major rows: 4-d at most, batch left as -1
        p = torch.cat([r.float().reshape(-1, a, c, gh * gw).permute(0, 1, 3, 2).reshape(-1, a * gh * gw, c)
                       for r, (a, gh, gw) in zip(raws, self.layout, strict=True)], 1)
        xy, wh, prob = p[..., 0:2], p[..., 2:4], p[..., 4:]
        if self.new_coords:
            wh = 4 * wh * wh
        else:
            xy, wh, prob = xy.sigmoid(), wh.exp(), prob.sigmoid()
        if self.scaled:
            xy = xy * self.xy_scale - (self.xy_scale - 1) / 2
        centre = (xy + self.grid) * self.cell
        half = wh * self.anchors / 2
        boxes = torch.cat([centre - half, centre + half], -1)
        return boxes, prob[..., 0:1] * prob[..., 1:]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        raws = self.detector(x)
        boxes, scores = self.decode(raws)
        if not self.nms:
            return (*raws, boxes, scores)
        return (*raws, boxes, scores, *padded_nms(boxes, scores, self.max_det, self.iou, self.conf))


# --- export and check ------------------------------------------------------------------------------


@dataclass
class DetectorCheck:
    """One engine's comparison with PyTorch; ``parts``: the difference of each kind of output
    (``raw``, ``boxes``, ``scores``, ``nms``), relative to that output's scale."""

    engine: str
    parts: dict[str, float] = field(default_factory=dict)
    max_abs_diff: float | None = None
    error: str | None = None
    note: str | None = None
    detections: int | None = None  # kept by the graph's NMS, over every checked image

    @property
    def rel_diff(self) -> float | None:
        return max(self.parts.values()) if self.parts else None

    def ok(self, tol: float) -> bool:
        return self.error is None and self.rel_diff is not None and self.rel_diff <= tol


@dataclass
class DetectorExportResult:
    path: Path
    opset: int
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    tol: float
    form: str  # "raw", "decode" or "decode+nms"
    outputs: list[tuple[str, tuple]]  # name, shape (a str for a dynamic dimension)
    checks: list[DetectorCheck] = field(default_factory=list)
    nms_options: dict | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok(self.tol) for c in self.checks)

    def summary(self) -> str:
        size = self.path.stat().st_size / 2**20 if self.path.exists() else 0.0
        form = {RAW: "raw head maps only", DECODED: "decode in the graph"}.get(self.form)
        if form is None:
            o = self.nms_options
            form = f"decode and NMS in the graph (conf {o['conf']:g}, iou {o['iou']:g}, max-det {o['max_det']})"
        shape = lambda s: "(" + ", ".join(map(str, s)) + ("," if len(s) == 1 else "") + ")"  # noqa: E731
        lines = [f"wrote {self.path} ({size:.1f} MiB, opset {self.opset}, input {tuple(self.input_shape)}"
                 f"{', dynamic batch' if self.dynamic_batch else ''}; {form})",
                 "  outputs: " + ", ".join(f"{n} {shape(s)}" for n, s in self.outputs)]
        for c in self.checks:
            if c.error:
                lines.append(f"  {c.engine:<12} FAILED: {c.error}")
                continue
            verdict = "ok" if c.ok(self.tol) else f"FAILED (> {self.tol:g})"
            parts = ", ".join(f"{k} {v:.1e}" for k, v in c.parts.items())
            if c.detections is not None:
                parts += f" ({c.detections} detections)"
            lines.append(f"  {c.engine:<12} max relative diff vs PyTorch: {parts}  {verdict}")
            if c.note:
                lines.append(f"  {'':<12} note: {c.note}")
        return "\n".join(lines)


def _abs_diff(out: Tensor, ref: Tensor) -> Tensor:
    """``|out - ref|`` in float64, zero where both hold the same value (an overflowed ``exp`` of an
    untrained head gives inf in every engine), inf where only one is NaN."""
    out, ref = out.detach().double(), ref.detach().double()
    diff = (out - ref).abs()
    same = (out == ref) | (out.isnan() & ref.isnan())
    return torch.where(same, torch.zeros_like(diff), diff.nan_to_num(nan=float("inf")))


def _relative(out: Tensor, ref: Tensor, floor: float | None = 1.0) -> float:
    """``max |out - ref|`` over the reference's scale (``max |ref|``, at least ``floor``; None: the
    scale itself, for scores whose untrained values may lie far below 1)."""
    if ref.numel() == 0:
        return 0.0
    scale = ref.detach().double().abs().nan_to_num(posinf=0.0, neginf=0.0).max().item()
    scale = max(floor, scale) if floor is not None else max(scale, 1e-30)
    return _abs_diff(out, ref).max().item() / scale


def _box_relative(out: Tensor, ref: Tensor) -> float:
    """Boxes: each box's difference over its own scale (its largest coordinate, at least 1 pixel).
    An untrained head's ``exp`` gives some boxes of 1e10 pixels; one scale for all would hide a
    shifted grid or a swapped anchor in the boxes of sensible size."""
    if ref.numel() == 0:
        return 0.0
    scale = ref.detach().double().abs().nan_to_num(posinf=0.0, neginf=0.0).amax(-1, keepdim=True).clamp(min=1.0)
    return (_abs_diff(out, ref) / scale).max().item()


def reference_outputs(detector: Detector, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
    """PyTorch's raw maps, and boxes and scores from :meth:`Detector.decode` (the library's decode,
    not the exported form's), for an input ``x``."""
    with torch.no_grad():
        raws = detector(x)
        dec = detector.decode(raws, tuple(x.shape[-2:]))
    return raws, dec[..., :4], dec[..., 4:5] * dec[..., 5:]


def compare_nms(outs: Sequence[Tensor], boxes: Tensor, scores: Tensor, max_det: int, iou: float, conf: float
                ) -> tuple[float, int]:
    """The graph's NMS outputs against :func:`padded_nms` (torchvision's ``batched_nms``) run on the
    same engine's ``boxes`` and ``scores`` (themselves checked against PyTorch), so a score on the
    ``conf`` edge cannot flip a detection. The same detections and labels are required; returns
    the boxes' and scores' difference (rows compared in a fixed order, so ties in score may come in
    either order) and the number of detections."""
    num, det_boxes, det_scores, det_labels = outs
    ref = padded_nms(boxes.float(), scores.float(), max_det, iou, conf)
    worst = 0.0
    for i in range(boxes.shape[0]):
        n, n_ref = int(num[i]), int(ref[0][i])
        if n != n_ref:
            raise ValueError(f"NMS kept {n} detections in image {i}, PyTorch's NMS {n_ref}")
        got = _sorted_rows(det_boxes[i, :n], det_scores[i, :n], det_labels[i, :n])
        exp = _sorted_rows(ref[1][i, :n], ref[2][i, :n], ref[3][i, :n])
        if not torch.equal(got[2], exp[2]):
            raise ValueError(f"NMS kept other classes than PyTorch's NMS in image {i}")
        worst = max(worst, _box_relative(got[0], exp[0]), _relative(got[1], exp[1]))
    pad = det_labels < 0
    if (det_boxes[pad] != 0).any() or (det_scores[pad] != 0).any() or int(pad.sum()) != pad.numel() - int(num.sum()):
        raise ValueError("the NMS padding rows are not zero boxes and scores with label -1")
    return worst, int(num.sum())


def _sorted_rows(boxes: Tensor, scores: Tensor, labels: Tensor):
    key = lambda j: (int(labels[j]), -float(scores[j]), *map(float, boxes[j]))  # noqa: E731
    order = torch.tensor(sorted(range(len(labels)), key=key), dtype=torch.long)
    return boxes.float()[order], scores.float()[order], labels.long()[order]


def _without_nms(path: Path, names: list[str], tmp: str) -> Path:
    """The same graph cut before its NMS (for an engine that cannot run NonMaxSuppression)."""
    import onnx.utils

    cut = Path(tmp) / "without_nms.onnx"
    onnx.utils.extract_model(str(path), str(cut), ["input"], names)
    return cut


def check_detector_onnx(path, detector: Detector, form: DecodedDetector | None, inputs: Sequence[Tensor],
                        engines: Sequence[str]) -> list[DetectorCheck]:
    """Run the file in each engine on each input and compare with eager PyTorch: the raw maps, the
    boxes and scores of :meth:`Detector.decode` (``form`` None: the raw maps only), and the NMS
    outputs (see :func:`compare_nms`).

    An engine in :data:`NMS_OPTIONAL_ENGINES` that cannot run the NMS graph is checked on the same
    graph cut before the NMS, and the check's note says so."""
    refs = [reference_outputs(detector, x) for x in inputs]
    names = [f"raw{i}" for i in range(len(detector.heads))] + ([] if form is None else ["boxes", "scores"])
    with_nms = form is not None and form.nms
    checks = []
    for engine in engines:
        check = DetectorCheck(engine)
        checks.append(check)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                run_path = path
                for x, ref in zip(inputs, refs, strict=True):
                    try:
                        outs = engines_mod.RUNNERS[engine](run_path, [x])
                    except Exception as e:
                        if run_path != path or not with_nms or engine not in NMS_OPTIONAL_ENGINES:
                            raise
                        check.note = (f"{engine} cannot run the NMS graph ({_missing_layer(e)}): checked the same "
                                      "graph without its NMS nodes; the NMS is checked in onnxruntime only")
                        run_path = _without_nms(path, names, tmp)
                        outs = engines_mod.RUNNERS[engine](run_path, [x])
                    diffs, abs_diff, kept = _compare([torch.as_tensor(o) for o in outs], *ref, names,
                                               form if run_path == path else None)
                    for k, v in diffs.items():
                        check.parts[k] = max(check.parts.get(k, 0.0), v)
                    check.max_abs_diff = max(check.max_abs_diff or 0.0, abs_diff)
                    if kept is not None:
                        check.detections = (check.detections or 0) + kept
        except Exception as e:  # any engine failure is reported, and fails the export
            check.error = first_line(e, 300)
    return checks


def _compare(outs: list[Tensor], raws, boxes, scores, names, form: DecodedDetector | None):
    """Differences of one engine run (``form``: its NMS outputs are compared when it has them)."""
    n_raw = len(raws)
    expected = [*raws, boxes, scores][:len(names)]
    want = len(expected) + (len(NMS_OUTPUTS) if form is not None and form.nms else 0)
    if len(outs) != want:
        raise ValueError(f"{len(outs)} outputs, PyTorch gives {want}")
    got = [o.reshape(e.shape) if o.numel() == e.numel() else o for o, e in zip(outs, expected, strict=False)]
    for o, e, name in zip(got, expected, names, strict=True):
        if o.shape != e.shape:
            raise ValueError(f"output {name} has shape {tuple(o.shape)}, PyTorch's {tuple(e.shape)}")
    diffs = {"raw": max(_relative(o, e) for o, e in zip(got[:n_raw], raws, strict=True))}
    if len(expected) > n_raw:
        diffs["boxes"] = _box_relative(got[n_raw], boxes)
        diffs["scores"] = _relative(got[n_raw + 1], scores, floor=None)
    kept = None
    if len(outs) > len(expected):
        b, k = boxes.shape[0], form.max_det
        rest = outs[len(expected):]
        nms_outs = [rest[0].reshape(b), rest[1].reshape(b, k, 4), rest[2].reshape(b, k), rest[3].reshape(b, k)]
        diffs["nms"], kept = compare_nms(nms_outs, got[n_raw], got[n_raw + 1], k, form.iou, form.conf)
    abs_diff = max(_abs_diff(o, e).max().item() for o, e in zip(got, expected, strict=False) if e.numel())
    return diffs, abs_diff, kept


def _missing_layer(e: Exception) -> str:
    """What an engine said, shortened to the layer it lacks where it names one (OpenCV's importer
    writes a long multi-line message)."""
    found = re.search(r'of type "(\w+)"', str(e))
    return f"no {found[1]} layer" if found else first_line(e, 200)


def _graph_outputs(data: bytes) -> list[tuple[str, tuple]]:
    import onnx

    outs = []
    for o in onnx.load_from_string(data).graph.output:
        dims = tuple(d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim)
        outs.append((o.name, dims))
    return outs


def export_detector(
    detector: Detector,
    path: str | os.PathLike,
    *,
    img_size=None,
    batch_size: int = 1,
    form: str = DECODED,
    nms: bool = False,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    opset: int | None = None,
    dynamic_batch: bool = False,
    simplify: bool = False,
    engines: Sequence[str] | None = None,
    tol: float = 1e-4,
    example_input: Tensor | None = None,
) -> DetectorExportResult:
    """Write ``detector`` as one ONNX file at ``path`` (atomically) and check it in each engine.

    ``form``: ``"decode"`` (raw maps, boxes, scores; with ``nms`` also the NMS outputs) or ``"raw"``
    (the raw maps only). The input is ``example_input`` or seeded uniform noise in [0, 1] (what a
    detector reads) of ``batch_size`` images at ``img_size`` (default the detector's); with
    ``dynamic_batch`` a batch one larger is checked too. ``result.ok`` is False when an engine fails
    or a difference exceeds ``tol`` (see :class:`DetectorCheck`); the file is kept either way."""
    opset = check_opset(DEFAULT_OPSET if opset is None else opset)
    path = check_output_path(path)
    if form not in (RAW, DECODED):
        raise ValueError(f"form={form!r} is not allowed; choose {RAW!r} or {DECODED!r}")
    if form == RAW and nms:
        raise ValueError("the raw form has no decode to run NMS on; use form='decode' with nms")
    if not isinstance(detector, Detector):
        raise ValueError(f"{type(detector).__name__} is not a detector")
    detector = copy.deepcopy(detector).eval()
    decoded = DecodedDetector(detector, img_size, nms, conf, iou, max_det)  # checks the size and options
    h, w = decoded.img_size
    chans = detector.in_chans or 3
    x = example_input if example_input is not None else torch.rand(
        batch_size, chans, h, w, generator=torch.Generator().manual_seed(0))
    if tuple(x.shape[-2:]) != (h, w):
        raise ValueError(f"the example input is {tuple(x.shape[-2:])}, the export size {(h, w)}")
    module = decoded if form == DECODED else detector
    names = decoded.output_names if form == DECODED else decoded.output_names[:len(detector.heads)]
    data = to_onnx_bytes(prepare_for_export(module), x, opset, dynamic_batch, ("input",), names,
                         custom_translation_table=translation_table() if nms else None)
    if simplify:
        data = simplify_onnx(data)
    atomic_write_bytes(path, data)
    inputs = [x]
    if dynamic_batch:
        inputs.append(torch.rand(x.shape[0] + 1, *x.shape[1:], generator=torch.Generator().manual_seed(1)))
    kind = RAW if form == RAW else ("decode+nms" if nms else DECODED)
    result = DetectorExportResult(path, opset, tuple(x.shape), dynamic_batch, tol, kind, _graph_outputs(data),
                                  nms_options={"conf": conf, "iou": iou, "max_det": decoded.max_det} if nms else None)
    result.checks = check_detector_onnx(path, detector, decoded if form == DECODED else None, inputs,
                                        ENGINES if engines is None else engines)
    return result


__all__ = ["DecodedDetector", "DetectorCheck", "DetectorExportResult", "check_detector_onnx", "export_detector",
           "padded_nms", "translation_table"]
