"""Where classification images come from: the ``--data`` spec and the raw train/val splits it names.

A spec is one of:

- ``builtin``: scikit-learn's handwritten digits (1,797 real 8x8 grey scans, 10 classes), split
  80/20 per class with a fixed seed; ships with a dependency, so nothing is downloaded;
- a directory with ``train/`` and ``val/`` ImageFolder subfolders (one folder per class);
- a CIFAR-10/100 python-batches directory (the layout of ``cifar-10-batches-py``);
- ``torchvision:NAME:ROOT``: ``torchvision.datasets.NAME(root=ROOT, download=False)``.

Every split yields ``(image, label)`` with the image either a PIL image (files) or a uint8
``C x H x W`` tensor (in-memory sets); file images that cannot be decoded raise
:class:`~cspnet.data.images.UnreadableImage` when read.
"""

from __future__ import annotations

import difflib
import inspect
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import first_line
from .images import is_grey, open_image
from .scan import SCAN_LIMIT, scan_samples

SPEC_HELP = (
    "classification data is an ImageFolder directory (train/ and val/ subfolders), a CIFAR python-batches "
    "directory, torchvision:NAME:ROOT or builtin"
)
SMALL_SIDE = 64  # images up to this size are treated as thumbnails (MNIST, CIFAR, digits)


@dataclass
class Source:
    """The two raw splits of a data spec, and what the transforms need to know about them."""

    spec: str
    train: Dataset
    val: Dataset
    classes: list[str]
    grey: bool  # every image is single-channel
    native_side: int  # typical longer side in pixels
    hflip: float  # default horizontal-flip probability (0 for digits: a mirrored 2 is no 2)
    # per split ("train", "val"): the files left out before training (data.scan), one message each
    unreadable: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "val": []})

    @property
    def small(self) -> bool:
        return self.native_side <= SMALL_SIDE


class TensorImages(Dataset):
    """In-memory uint8 images ``N x C x H x W`` with integer labels."""

    def __init__(self, images: torch.Tensor, labels):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


class FileImages(Dataset):
    """``(path, label)`` pairs, decoded on access."""

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return open_image(path), label


class WrappedImages(Dataset):
    """A torchvision dataset that returns ``(PIL image, label)``."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        img, label = self.ds[i]
        return img, int(label)


def load_source(spec: str, train: bool = True) -> Source:
    """The raw splits named by ``spec``; a ValueError naming the problem for anything else.
    ``train=False``: only the validation split is needed (an ImageFolder may lack ``train/``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty data spec; {SPEC_HELP}")
    if spec == "builtin":
        return builtin_digits()
    if spec.startswith("torchvision:"):
        return torchvision_source(spec)
    root = Path(spec).expanduser()
    if not root.exists():
        raise ValueError(f"{spec}: no such directory; {SPEC_HELP}")
    if not root.is_dir():
        raise ValueError(f"{spec}: not a directory; {SPEC_HELP}")
    if (root / "train").is_dir() or (root / "val").is_dir():
        return image_folder(root, spec, train)
    if (root / "batches.meta").is_file() or (root / "meta").is_file():
        return cifar_batches(root, spec)
    raise ValueError(
        f"{spec}: neither train/ + val/ ImageFolder subfolders nor CIFAR python batches found; {SPEC_HELP}"
    )


# --- builtin ----------------------------------------------------------------------------------


def builtin_digits() -> Source:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 17 grey levels (0..16) -> 0..255
    images = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = digits.target.astype(np.int64)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels
    )
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    return Source(
        "builtin",
        TensorImages(images[train_idx], labels[train_idx]),
        TensorImages(images[val_idx], labels[val_idx]),
        [str(i) for i in range(10)],
        grey=True, native_side=8, hflip=0.0,
    )


# --- ImageFolder ------------------------------------------------------------------------------


def _folder_split(root: Path, spec: str, split: str):
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    path = root / split
    if not path.is_dir():
        raise ValueError(f"{spec}: no {split}/ subfolder; an ImageFolder data set needs train/ and val/")
    folder = ImageFolder(str(path), loader=str, allow_empty=True) if _has_classes(path) else None
    if folder is None:
        raise ValueError(f"{path}: holds no class folders; put each class's images in {path}/<class>/")
    counts = np.bincount(np.asarray(folder.targets, dtype=np.int64), minlength=len(folder.classes))
    empty = [c for c, n in zip(folder.classes, counts, strict=True) if n == 0]
    if empty:
        exts = ", ".join(sorted(IMG_EXTENSIONS))
        raise ValueError(
            f"{path / empty[0]}: empty class folder (no {exts} files); add images or remove the folder"
        )
    return folder.classes, folder.samples


def _has_classes(path: Path) -> bool:
    return any(p.is_dir() for p in path.iterdir())


def image_folder(root: Path, spec: str, train: bool = True) -> Source:
    has_train = train or (root / "train").is_dir()  # evaluating needs val/ alone
    train_classes, train_samples = _folder_split(root, spec, "train") if has_train else (None, [])
    val_classes, val_samples = _folder_split(root, spec, "val")
    train_classes = train_classes if has_train else val_classes
    if train_classes != val_classes:
        only = sorted(set(train_classes) ^ set(val_classes))
        raise ValueError(
            f"{spec}: train/ and val/ have different class folders (e.g. {only[0]!r}); give both the same classes"
        )
    unreadable = {"train": [], "val": []}
    if not train:
        train_samples = []  # its class folders were all evaluation needed
    if len(train_samples) + len(val_samples) <= SCAN_LIMIT:  # small: every file decoded now (data.scan)
        scan = scan_samples(train_samples, val_samples)
        if not scan.side:
            raise ValueError(f"{spec}: none of its images can be read ({sum(scan.unreadable, [])[0]})")
        (train_samples, val_samples), grey, side = scan.splits, scan.grey, scan.side
        unreadable = dict(zip(unreadable, scan.unreadable, strict=True))
    else:
        grey, side = _survey(train_samples or val_samples)
    return Source(spec, FileImages(train_samples), FileImages(val_samples), train_classes, grey, side, 0.5,
                  unreadable)


def _survey(samples: list[tuple[str, int]], n: int = 48) -> tuple[bool, int]:
    """Whether a spread of the files are all grey, and their median longer side (headers only)."""
    from PIL import Image

    step = max(1, len(samples) // n)
    greys, sides = [], []
    for path, _ in samples[::step][:n]:
        try:
            with Image.open(path) as img:
                greys.append(is_grey(img))
                sides.append(max(img.size))
        except (OSError, SyntaxError, ValueError):
            continue  # unreadable files are reported (and skipped) when the loader reaches them
    if not sides:
        raise ValueError(f"{Path(samples[0][0]).parent.parent}: none of the sampled images can be read")
    return all(greys), int(np.median(sides))


# --- CIFAR python batches ---------------------------------------------------------------------


def _latin1_bytes(text, encoding):
    """``_codecs.encode`` as pickle protocols 0-2 use it: Python 3 writes ``bytes`` (dict keys, array
    data) as ``encode(str, "latin1")``. Only that codec is allowed; others (zlib, rot13, ...) are
    not bytes literals."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing to call _codecs.encode with {encoding!r}")
    return text.encode("latin1")


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's batches are pickles: allow dicts, lists, strings, bytes and numpy arrays, nothing callable."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a CIFAR python batch ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a CIFAR python batch (holds a {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_arrays(files: list[Path], label_key: str) -> TensorImages:
    images, labels = [], []
    for f in files:
        batch = _unpickle(f)
        if "data" not in batch or label_key not in batch:
            raise ValueError(f"{f}: a CIFAR batch needs 'data' and {label_key!r} entries")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{f}: 'data' has shape {data.shape}, CIFAR batches hold N x 3072")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(int(x) for x in batch[label_key])
    return TensorImages(torch.from_numpy(np.concatenate(images)), labels)


def cifar_batches(root: Path, spec: str) -> Source:
    if (root / "batches.meta").is_file():  # CIFAR-10
        meta, key, names_key = _unpickle(root / "batches.meta"), "labels", "label_names"
        train_files = sorted(root.glob("data_batch_*"))
        val_files = [root / "test_batch"]
    else:  # CIFAR-100
        meta, key, names_key = _unpickle(root / "meta"), "fine_labels", "fine_label_names"
        train_files, val_files = [root / "train"], [root / "test"]
    missing = [f for f in (train_files or [root / "data_batch_1"]) + val_files if not f.is_file()]
    if missing:
        raise ValueError(f"{missing[0]}: missing CIFAR batch file; the folder needs every batch of the set")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(names_key, [])]
    train, val = _cifar_arrays(train_files, key), _cifar_arrays(val_files, key)
    n = int(max(train.labels.max(), val.labels.max())) + 1
    if len(classes) < n:
        classes = [str(i) for i in range(n)]
    return Source(spec, train, val, classes, grey=False, native_side=32, hflip=0.5)


# --- torchvision datasets on disk -------------------------------------------------------------


def torchvision_source(spec: str) -> Source:
    import torchvision.datasets as tvd

    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ValueError(f"{spec}: write torchvision:NAME:ROOT, e.g. torchvision:FashionMNIST:data")
    _, name, root = parts
    cls = getattr(tvd, name, None)
    if not inspect.isclass(cls) or not issubclass(cls, torch.utils.data.Dataset):
        names = [n for n in dir(tvd) if inspect.isclass(getattr(tvd, n)) and n[0].isupper()]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"{spec}: torchvision.datasets has no data set {name!r}{hint}")
    if not Path(root).expanduser().is_dir():
        raise ValueError(f"{spec}: no such directory {root!r}")
    train = _tv_split(cls, name, root, spec, train=True)
    val = _tv_split(cls, name, root, spec, train=False)
    classes = [str(c) for c in getattr(train, "classes", [])]
    data = getattr(train, "data", None)
    if isinstance(data, torch.Tensor) and data.dtype == torch.uint8 and data.ndim == 3:  # MNIST family
        wrap = [TensorImages(ds.data.unsqueeze(1), ds.targets) for ds in (train, val)]
        grey, side = True, int(max(data.shape[1:]))
    else:
        wrap = [WrappedImages(train), WrappedImages(val)]
        first = train[0][0]
        grey = not hasattr(first, "mode") or is_grey(first)
        side = max(first.size) if hasattr(first, "size") and not callable(first.size) else SMALL_SIDE
    if not classes:
        classes = [str(i) for i in range(_num_labels(train))]
    return Source(spec, wrap[0], wrap[1], classes, grey, side, 0.5)


def _tv_split(cls, name, root, spec, train: bool):
    params = inspect.signature(cls).parameters
    if "train" in params:
        attempts = [{"train": train}]
    elif "split" in params:
        attempts = [{"split": "train"}] if train else [{"split": "val"}, {"split": "test"}]
    else:
        raise ValueError(f"{spec}: torchvision.datasets.{name} has no train/test split argument")
    if "download" in params:
        for a in attempts:
            a["download"] = False
    error = None
    for kwargs in attempts:
        try:
            return cls(root=root, **kwargs)
        except (RuntimeError, OSError, ValueError) as e:
            error = first_line(e)
    raise ValueError(
        f"{spec}: torchvision.datasets.{name}(root={root!r}) cannot load its files ({error}); "
        "cspnet never downloads: put the files where that class looks for them"
    )


def _num_labels(ds) -> int:
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = [ds[i][1] for i in range(len(ds))]
    return int(max(int(t) for t in targets)) + 1
