"""Detection data on disk, in COCO or YOLO (ultralytics) layout, read into one form: per-image
records in pixels with contiguous labels, the class names, the original category ids, and the COCO
ground truth an evaluator scores against.

A spec is ``builtin`` (:mod:`cspnet.data.builtin_detect`), a data YAML (``.yaml``/``.yml``: YOLO), a
folder with ``annotations/instances_*.json`` (COCO) or a folder with ``data.yaml`` (YOLO). Bad input
is handled as COCO tools and ultralytics do: a structural problem (no such file, unreadable
JSON/YAML, a missing key, a path that does not exist) is a one-line ``ValueError`` naming the file
and key; a bad entry is skipped (or its box clipped) with a one-line warning naming the file and
entry, counted per kind, so one bad line never stops a run.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_convert

from ..errors import first_line

DETECT_SPEC_HELP = (
    "detection data is builtin (digits on photographs, generated once), a YOLO data YAML (.yaml/.yml), a COCO "
    "folder (annotations/instances_{train,val}.json with images/{train,val}/) or a folder holding data.yaml"
)
SPLITS = ("train", "val")
CLIP_TOLERANCE = 1.0  # px a box may overshoot the image unremarked: annotation tools round at the border
MAX_WARNINGS = 1000  # texts kept; the counts stay exact
VOTE_SAMPLE = 16  # image entries tried against each candidate image folder


@dataclass
class DetectionRecord:
    """One image and its kept annotations.

    ``boxes`` are the training form (XYXY pixels, clipped to the image); ``gt_bbox`` and ``areas``
    the evaluation form, as the file wrote them (COCO XYWH pixels), so scores match COCO's tools.
    Crowd regions (``iscrowd``) are never training targets but stay for evaluation.
    """

    image_id: int
    path: Path
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float64 XYXY, clipped
    labels: np.ndarray  # (N,) int64 contiguous class index
    iscrowd: np.ndarray  # (N,) bool
    gt_bbox: np.ndarray  # (N, 4) float64 XYWH as written
    areas: np.ndarray  # (N,) float64
    ann_ids: np.ndarray  # (N,) int64
    exif_transpose: bool = False  # YOLO labels describe the EXIF-rotated image (ultralytics reads it so)

    @property
    def num_targets(self) -> int:
        return int((~self.iscrowd).sum())


@dataclass
class DetectionSource:
    """Both splits of a detection spec, its classes, and what was skipped reading it.

    ``category_ids[i]`` is class ``i``'s id in the ground truth: COCO's own ids (sorted, so
    non-contiguous ids map in order), or ``i + 1`` for YOLO, which has none (COCO numbers from 1).
    ``warnings`` holds one line per skipped or clipped entry (the first ``MAX_WARNINGS``);
    ``counts`` the exact number per kind.
    """

    spec: str
    layout: str  # "coco" | "yolo"
    root: Path
    classes: list[str]
    category_ids: list[int]
    categories: list[dict]
    train: list[DetectionRecord]
    val: list[DetectionRecord]
    files: dict[str, str] = field(default_factory=dict)  # split -> the file its annotations came from
    warnings: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    @property
    def num_warnings(self) -> int:
        return sum(self.counts.values())

    def summary(self, first: int = 3) -> str:
        """``"N warnings (k kind, ...); first: ..."``, or "" when the data was clean."""
        if not self.counts:
            return ""
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.counts.most_common())
        return f"{self.num_warnings} warnings ({kinds}); first: " + "; ".join(self.warnings[:first])

    def split(self, name: str) -> list[DetectionRecord]:
        if name not in SPLITS:
            raise ValueError(f"split={name!r}: detection data has splits {', '.join(SPLITS)}")
        return self.train if name == "train" else self.val

    def coco_gt(self, split: str) -> dict:
        """COCO ground truth for ``split``: original image and category ids (COCO input), crowd regions
        included, skipped entries left out; what pycocotools' ``COCO`` takes as its dataset."""
        images, annotations = [], []
        for r in self.split(split):
            images.append({"id": r.image_id, "width": r.width, "height": r.height, "file_name": r.file_name})
            for k in range(len(r.labels)):
                annotations.append({"id": int(r.ann_ids[k]), "image_id": r.image_id,
                                    "category_id": self.category_ids[int(r.labels[k])],
                                    "bbox": [float(v) for v in r.gt_bbox[k]], "area": float(r.areas[k]),
                                    "iscrowd": int(r.iscrowd[k])})
        return {"info": {"description": f"{self.spec} ({split})"}, "licenses": [], "images": images,
                "annotations": annotations, "categories": [dict(c) for c in self.categories]}


def load_detection_source(spec: str | Path, image_root: str | Path | None = None,
                          splits: tuple[str, ...] = SPLITS) -> DetectionSource:
    """Read ``spec`` (see the module docstring); ``image_root`` is where COCO ``file_name``s are
    relative to when not ``images/<split>/``; a split left out of ``splits`` stays empty."""
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(f"splits={tuple(splits)!r}: choose from {', '.join(SPLITS)}")
    if str(spec) == "builtin":
        from .builtin_detect import builtin_detection_root

        return _read_yolo("builtin", builtin_detection_root() / "data.yaml", image_root, splits)
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"{path}: no such data YAML; {DETECT_SPEC_HELP}")
        return _read_yolo(str(spec), path, image_root, splits)
    if path.is_dir():
        if any((path / "annotations").glob("instances_*.json")):
            return _read_coco(str(spec), path, image_root, splits)
        for name in ("data.yaml", "data.yml"):
            if (path / name).is_file():
                return _read_yolo(str(spec), path / name, image_root, splits)
        raise ValueError(f"{path}: no annotations/instances_*.json or data.yaml in this folder; {DETECT_SPEC_HELP}")
    raise ValueError(f"{path}: no such file or directory; {DETECT_SPEC_HELP}")


class _Log:
    """Counted one-line warnings."""

    def __init__(self):
        self.warnings: list[str] = []
        self.counts: Counter = Counter()

    def warn(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)


def _num(v: float) -> str:
    return f"{v:g}"


def _check_boxes(xyxy: torch.Tensor, sizes: torch.Tensor, shown: list[str], where: list[str], log: _Log):
    """Clip ``xyxy`` (N, 4) to each row's image ``sizes`` (N, 2: W, H); warn about and drop boxes of
    zero or negative size or wholly outside; warn about boxes clipped by more than the tolerance.
    Returns the kept rows' mask and the clipped boxes."""
    if len(xyxy) == 0:
        return np.zeros(0, dtype=bool), np.zeros((0, 4))
    w, h = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    bounds_hi = torch.cat([w, h, w, h], dim=1)
    clipped = torch.minimum(torch.maximum(xyxy, torch.zeros_like(xyxy)), bounds_hi)
    zero = (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])
    outside = ~zero & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    overshoot = (clipped - xyxy).abs().amax(dim=1)
    trimmed = ~zero & ~outside & (overshoot > CLIP_TOLERANCE)
    for i in zero.nonzero().flatten().tolist():
        log.warn("zero-size box", f"{where[i]}: zero-size box {shown[i]}; skipped")
    for i in outside.nonzero().flatten().tolist():
        size = f"{int(sizes[i, 0])}x{int(sizes[i, 1])}"
        log.warn("box outside image", f"{where[i]}: box {shown[i]} lies outside the {size} image; skipped")
    for i in trimmed.nonzero().flatten().tolist():
        size = f"{int(sizes[i, 0])}x{int(sizes[i, 1])}"
        xywh = box_convert(clipped[i:i + 1], "xyxy", "xywh")[0].tolist()
        log.warn("box clipped", f"{where[i]}: box {shown[i]} extends outside the {size} image; "
                                f"clipped to [{', '.join(map(_num, xywh))}] px")
    return (~zero & ~outside).numpy(), clipped.numpy()


def _record(image_id, path, file_name, width, height, anns: dict, exif: bool = False) -> DetectionRecord:
    """A record from column lists (``boxes``, ``labels``, ``iscrowd``, ``gt_bbox``, ``areas``, ``ann_ids``)."""
    return DetectionRecord(
        image_id=image_id, path=path, file_name=file_name, width=width, height=height,
        boxes=np.asarray(anns.get("boxes", []), dtype=np.float64).reshape(-1, 4),
        labels=np.asarray(anns.get("labels", []), dtype=np.int64),
        iscrowd=np.asarray(anns.get("iscrowd", []), dtype=bool),
        gt_bbox=np.asarray(anns.get("gt_bbox", []), dtype=np.float64).reshape(-1, 4),
        areas=np.asarray(anns.get("areas", []), dtype=np.float64),
        ann_ids=np.asarray(anns.get("ann_ids", []), dtype=np.int64), exif_transpose=exif)


# --- COCO ---------------------------------------------------------------------------------------


def _coco_json(folder: Path, split: str) -> Path:
    exact = folder / f"instances_{split}.json"
    if exact.is_file():
        return exact
    found = sorted(folder.glob(f"instances_{split}*.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"{folder}: no instances_{split}.json (the {split} split's COCO annotations)")
    raise ValueError(f"{folder}: several {split} annotation files ({', '.join(p.name for p in found)}); "
                     f"keep one or name it instances_{split}.json")


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not a readable COCO json ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a COCO json (the top level is a {type(data).__name__}, not an object)")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: no '{key}' list; a COCO instances json has images, annotations, categories")
    if not isinstance(data.get("annotations", []), list):
        raise ValueError(f"{path}: 'annotations' is not a list")
    return data


def _coco_categories(path: Path, data: dict) -> list[dict]:
    cats = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise ValueError(f"{path}: categories[{i}] needs an integer 'id' and a 'name'")
        if c["id"] in cats:
            raise ValueError(f"{path}: category id {c['id']} is listed twice")
        cats[c["id"]] = {k: c[k] for k in ("id", "name", "supercategory") if k in c}
    if not cats:
        raise ValueError(f"{path}: the 'categories' list is empty")
    return [cats[k] for k in sorted(cats)]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_size(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _image_folder(path: Path, entries: list[dict], candidates: list[Path]) -> Path:
    """The candidate folder that holds the most of the listed files (a sample first, then all)."""
    for sample in (entries[:VOTE_SAMPLE], entries):
        hits = [sum((c / e["file_name"]).is_file() for e in sample) for c in candidates]
        if max(hits, default=0) > 0:
            return candidates[hits.index(max(hits))]
    tried = ", ".join(str(c) for c in candidates)
    raise ValueError(f"{path.name}: none of its {len(entries)} image files (e.g. {entries[0]['file_name']}) is under "
                     f"{tried}; put them in images/<split>/ or pass image_root")


def _read_coco(spec: str, root: Path, image_root, splits) -> DetectionSource:
    log, out, files, categories = _Log(), {s: [] for s in SPLITS}, {}, None
    for split in splits:
        path = _coco_json(root / "annotations", split)
        data = _load_json(path)
        cats = _coco_categories(path, data)
        if categories is None:
            categories = cats
        elif [(c["id"], c["name"]) for c in cats] != [(c["id"], c["name"]) for c in categories]:
            first = next(iter(files.values()))
            raise ValueError(f"{path}: its categories differ from {first}'s; both splits need one list")
        files[split] = path.name
        name = path.stem.removeprefix("instances_")
        bases = [Path(image_root) / name, Path(image_root)] if image_root is not None else []
        bases += [root / "images" / name, root / name, root / "images", root]
        out[split] = _coco_split(path, data, cats, bases, log)
    return DetectionSource(spec, "coco", root, [c["name"] for c in categories], [c["id"] for c in categories],
                           categories, out["train"], out["val"], files, log.warnings, log.counts)


def _coco_split(path: Path, data: dict, cats: list[dict], bases: list[Path], log: _Log) -> list[DetectionRecord]:
    src = path.name
    entries, seen = [], set()
    for i, e in enumerate(data["images"]):
        ident = e.get("id") if isinstance(e, dict) else None
        if not (_is_int(ident) and isinstance(e.get("file_name"), str) and _is_size(e.get("width"))
                and _is_size(e.get("height"))):
            log.warn("bad image entry", f"{src}: images[{i}] (id {ident}) lacks an integer id, file_name, width or "
                                        "height; skipped")
        elif ident in seen:
            log.warn("duplicate image", f"{src}: image {ident} is listed twice; the second entry skipped")
        else:
            seen.add(ident)
            entries.append(e)
    folder = _image_folder(path, entries, bases) if entries else bases[0]
    where_shown = folder.relative_to(bases[-1]) if folder.is_relative_to(bases[-1]) else folder
    images = {}
    for e in entries:
        file = folder / e["file_name"]
        if file.is_file():
            images[e["id"]] = (e, file, {})
        else:
            log.warn("missing image", f"{src}: image {e['id']} ({e['file_name']}): file not found under "
                                      f"{where_shown}; skipped")
    _coco_annotations(src, data.get("annotations", []), {c["id"]: k for k, c in enumerate(cats)}, seen, images, log)
    return [_record(e["id"], file, e["file_name"], int(e["width"]), int(e["height"]), anns)
            for e, file, anns in images.values()]


def _coco_annotations(src, annotations, label_of: dict, listed: set, images: dict, log: _Log) -> None:
    """Check each annotation, then clip the boxes together; fills the per-image column lists."""
    rows = []  # (ann id, image id, label, crowd, bbox, area, shown)
    for i, a in enumerate(annotations):
        if not isinstance(a, dict):
            log.warn("bad annotation", f"{src}: annotations[{i}] is not an object; skipped")
            continue
        ident = a.get("id", i)
        image_id, cat, bbox = a.get("image_id"), a.get("category_id"), a.get("bbox")
        entry = f"{src}: annotation {ident} (image {image_id})"
        if not _is_int(image_id) or image_id not in listed:
            log.warn("unknown image", f"{src}: annotation {ident}: image {image_id} not in images; skipped")
        elif image_id not in images:
            continue  # its image was skipped, and said so
        elif not _is_int(cat) or cat not in label_of:
            log.warn("unknown category", f"{entry}: category {cat} not in categories; skipped")
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
            log.warn("bad box", f"{entry}: bbox {bbox!r} is not 4 finite numbers [x, y, w, h]; skipped")
        else:
            area = a.get("area")
            area = float(area) if _is_size(area) else float(bbox[2] * bbox[3])
            shown = f"[{', '.join(map(_num, bbox))}]"
            rows.append((ident, image_id, label_of[cat], bool(a.get("iscrowd", 0)), bbox, area, shown, entry))
    if not rows:
        return
    xywh = torch.tensor([r[4] for r in rows], dtype=torch.float64)
    sizes = torch.tensor([[images[r[1]][0]["width"], images[r[1]][0]["height"]] for r in rows], dtype=torch.float64)
    keep, clipped = _check_boxes(box_convert(xywh, "xywh", "xyxy"), sizes, [r[6] for r in rows],
                                 [r[7] for r in rows], log)
    for k in np.flatnonzero(keep):
        ident, image_id, label, crowd, bbox, area = rows[k][:6]
        _append(images[image_id][2], clipped[k], label, crowd, bbox, area, ident)


def _append(anns: dict, box, label, crowd, gt_bbox, area, ident) -> None:
    for key, v in (("boxes", box), ("labels", label), ("iscrowd", crowd), ("gt_bbox", gt_bbox), ("areas", area),
                   ("ann_ids", ident)):
        anns.setdefault(key, []).append(v)


# --- YOLO ---------------------------------------------------------------------------------------


def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not a readable data YAML ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a data YAML (expected keys path, train, val, names)")
    return data


def _yolo_names(path: Path, data: dict) -> list[str]:
    names = data.get("names")
    if names is None:
        raise ValueError(f"{path}: no 'names' (the class names, a list or a {{id: name}} mapping)")
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise ValueError(f"{path}: 'names' keys must be class ids 0, 1, ...") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"{path}: 'names' ids must be 0-{len(by_id) - 1}, got {sorted(by_id)}")
        names = [by_id[k] for k in range(len(by_id))]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise ValueError(f"{path}: 'names' must be a list or a {{id: name}} mapping, not {type(names).__name__}")
    if not names:
        raise ValueError(f"{path}: 'names' is empty")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise ValueError(f"{path}: 'nc' is {nc} but 'names' lists {len(names)} classes")
    return names


def _yolo_images(path: Path, root: Path, key: str, value) -> tuple[list[Path], Path]:
    """The image files a ``train``/``val`` entry names (folders searched recursively, ``.txt`` files
    list one image a line, relative to the list's folder), and the folder ``file_name``s start from."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if value is None:
        raise ValueError(f"{path}: no '{key}' (the {key} images, relative to 'path')")
    found, bases = [], []
    for item in value if isinstance(value, list) else [value]:
        where = root / str(item)
        if where.is_dir():
            found += [p for p in where.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()]
            bases.append(where)
        elif where.is_file() and where.suffix == ".txt":
            lines = [s.strip() for s in where.read_text(encoding="utf-8").splitlines() if s.strip()]
            found += [where.parent / s for s in lines]
            bases.append(root)
        else:
            raise ValueError(f"{path}: '{key}' {item!r} ({where}) does not exist")
    found = sorted(set(found))
    if not found:
        raise ValueError(f"{path}: '{key}' {value!r} holds no image files")
    return found, bases[0] if len(bases) == 1 else root


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    if "images" in parts[:-1]:
        k = len(parts) - 2 - parts[:-1][::-1].index("images")
        parts[k] = "labels"
    return Path(*parts).with_suffix(".txt")


def _read_yolo(spec: str, path: Path, image_root, splits) -> DetectionSource:
    if image_root is not None:
        raise ValueError(f"{path}: image_root applies to COCO folders; a data YAML names its images itself")
    data = _load_yaml(path)
    classes = _yolo_names(path, data)
    given = data.get("path")
    root = path.parent if given in (None, "") else path.parent / str(given)
    if not root.is_dir():
        raise ValueError(f"{path}: 'path' {given!r} ({root}) does not exist")
    log, out = _Log(), {s: [] for s in SPLITS}
    for split in splits:
        key = "validation" if split == "val" and "val" not in data and "validation" in data else split
        out[split] = _yolo_split(path, root, split, *_yolo_images(path, root, key, data.get(key)), classes, log)
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(classes)]
    return DetectionSource(spec, "yolo", root, classes, [c["id"] for c in categories], categories, out["train"],
                           out["val"], {s: path.name for s in splits}, log.warnings, log.counts)


def _image_size(file: Path) -> tuple[int, int, bool]:
    """(width, height) as ultralytics sees the image (EXIF orientation applied), read from the header."""
    from PIL import Image

    with Image.open(file) as img:
        w, h = img.size
        turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    return (h, w, True) if turned else (w, h, False)


def _rel(file: Path, root: Path) -> str:
    return file.relative_to(root).as_posix() if file.is_relative_to(root) else str(file)


def _yolo_split(path, root, split, images, base, classes, log) -> list[DetectionRecord]:
    records, labelled, next_id = [], 0, 1
    for image_id, file in enumerate(images, start=1):
        if not file.is_file():
            log.warn("missing image", f"{_rel(file, root)}: no such image file; skipped")
            continue
        try:
            w, h, exif = _image_size(file)
        except (OSError, SyntaxError, ValueError) as e:
            log.warn("unreadable image", f"{_rel(file, root)}: not a readable image ({first_line(e)}); skipped")
            continue
        label = _label_path(file)
        anns = {}
        if label.is_file():
            labelled += 1
            try:
                text = label.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                log.warn("unreadable label file", f"{_rel(label, root)}: unreadable ({first_line(e)}); image skipped")
                continue
            anns = _yolo_labels(_rel(label, root), text, w, h, len(classes), path.name, log)
            n = len(anns.get("ann_ids", []))
            anns["ann_ids"] = list(range(next_id, next_id + n))  # unique per split, as COCO needs
            next_id += n
        records.append(_record(image_id, file, _rel(file, base), w, h, anns, exif))
    if records and not labelled:
        log.warn("no labels", f"{path.name}: {split}: no label files (looked for {_rel(_label_path(images[0]), root)} "
                              "and the like); every image is background")
    return records


def _yolo_labels(src: str, text: str, w: int, h: int, nc: int, yaml_name: str, log: _Log) -> dict:
    """Parse ``cls cx cy w h`` lines (or ``cls x1 y1 x2 y2 ...`` polygons, boxed as ultralytics does)."""
    rows = []  # (line number, class, normalised cx cy w h, shown)
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if not values or not all(map(math.isfinite, values)) or not (
                len(values) == 5 or (len(values) >= 7 and len(values) % 2 == 1)) or values[0] != int(values[0]):
            log.warn("bad label line", f"{src}: line {n}: {line.strip()[:60]!r} is not 'class cx cy w h'; skipped")
            continue
        cls = int(values[0])
        if not 0 <= cls < nc:
            log.warn("class out of range", f"{src}: line {n}: class {cls} but {yaml_name} names {nc} "
                                           f"class{'es' if nc > 1 else ''} (0-{nc - 1}); skipped")
            continue
        if len(values) == 5:
            box = values[1:]
        else:
            xs, ys = values[1::2], values[2::2]
            box = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
        rows.append((n, cls, box, " ".join(fields[1:5]) + (" ..." if len(values) > 5 else "")))
    if not rows:
        return {}
    scale = torch.tensor([w, h, w, h], dtype=torch.float64)
    xyxy = box_convert(torch.tensor([r[2] for r in rows], dtype=torch.float64) * scale, "cxcywh", "xyxy")
    sizes = torch.tensor([[w, h]] * len(rows), dtype=torch.float64)
    keep, clipped = _check_boxes(xyxy, sizes, [f"[{r[3]}] (cx cy w h)" for r in rows],
                                 [f"{src}: line {r[0]}" for r in rows], log)
    written = box_convert(xyxy, "xyxy", "xywh").numpy()
    anns: dict = {}
    for k in np.flatnonzero(keep):
        _append(anns, clipped[k], rows[k][1], False, written[k], float(written[k, 2] * written[k, 3]), rows[k][0])
    return anns
