"""Reading darknet .cfg files: sections, options and their line numbers.

The syntax is darknet's (``read_cfg`` in its ``parser.c``): ``[section]`` headers, ``key=value``
lines, ``#``/``;`` comment lines, whitespace removed everywhere, the first occurrence of a repeated
key wins (``enetb0.cfg`` sets ``decay`` twice and darknet uses the first). Where darknet prints a
warning and carries on (an unknown option, a line without ``=``), cspnet stops with a
:class:`CfgError` naming the file and line, because a silently ignored typo gives a different
network.

Options that only steer darknet's training (learning rate, augmentation, loss weights, ...) are
accepted and ignored; see ``TRAINING_ONLY``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CfgError, read_bytes

# section name as written -> canonical kind (darknet's aliases from string_to_layer_type)
SECTION_ALIASES = {
    "net": "net", "network": "net",
    "convolutional": "convolutional", "conv": "convolutional",
    "connected": "connected", "conn": "connected",
    "maxpool": "maxpool", "max": "maxpool",
    "avgpool": "avgpool", "avg": "avgpool",
    "softmax": "softmax", "soft": "softmax",
    "route": "route", "shortcut": "shortcut", "upsample": "upsample", "yolo": "yolo",
    "sam": "sam", "scale_channels": "scale_channels", "dropout": "dropout",
    "reorg": "reorg", "reorg3d": "reorg3d", "cost": "cost",
}

# options a layer's builder reads (cspnet.darknet.network)
READ = {
    "net": {"width", "height", "channels"},
    "convolutional": {"filters", "size", "stride", "stride_x", "stride_y", "pad", "padding", "groups",
                      "activation", "batch_normalize", "share_index"},
    "connected": {"output", "activation", "batch_normalize"},
    "maxpool": {"size", "stride", "maxpool_depth", "out_channels"},
    "avgpool": set(),
    "softmax": {"groups", "temperature"},
    "route": {"layers", "groups", "group_id"},
    "shortcut": {"from", "activation"},
    "upsample": {"stride"},
    "yolo": {"mask", "anchors", "classes", "num", "scale_x_y", "new_coords"},
    "sam": {"from", "activation"},
    "scale_channels": {"from", "activation", "scale_wh"},
    "dropout": {"probability"},
    "reorg": {"stride"},
    "reorg3d": {"stride"},
    "cost": set(),
}

_LAYER_TRAINING = {"clip", "onlyforward", "dont_update", "burnin_update", "stopbackward", "train_only_bn",
                   "learning_rate"}
TRAINING_ONLY = {
    "net": {
        "batch", "subdivisions", "learning_rate", "learning_rate_min", "sgdr_cycle", "sgdr_mult", "momentum",
        "decay", "time_steps", "track", "augment_speed", "sequential_subdivisions", "try_fix_nan",
        "weights_reject_freq", "equidistant_point", "badlabels_rejection_percentage",
        "num_sigmas_reject_badlabels", "ema_alpha", "use_cuda_graph", "loss_scale", "dynamic_minibatch",
        "optimized_memory", "workspace_size_limit_MB", "adam", "B1", "B2", "eps", "max_crop", "min_crop",
        "flip", "blur", "gaussian_noise", "mixup", "cutmix", "mosaic", "letter_box", "mosaic_bound",
        "contrastive", "contrastive_jit_flip", "contrastive_color", "unsupervised", "label_smooth_eps",
        "resize_step", "attention", "adversarial_lr", "max_chart_loss", "angle", "aspect", "saturation",
        "exposure", "hue", "power", "policy", "burn_in", "step", "scale", "steps", "scales", "seq_scales",
        "gamma", "max_batches", "show_receptive_field", "center",
    },
    "yolo": {
        "jitter", "ignore_thresh", "truth_thresh", "random", "iou_thresh", "iou_thresh_kind", "iou_loss",
        "iou_normalizer", "obj_normalizer", "cls_normalizer", "delta_normalizer", "uc_normalizer",
        "nms_kind", "beta_nms", "max_delta", "max", "label_smooth_eps", "objectness_smooth", "focal_loss",
        "resize", "counters_per_class", "show_details",
        "beta1",  # a typo of beta_nms in csresnext50-panet-spp-original-optimal.cfg; darknet ignores it
    },
    "cost": {"type", "scale", "ratio", "noobject_scale", "thresh"},
    "softmax": {"noloss"},
}


@dataclass
class Section:
    """One ``[kind]`` block: its options with the line each came from."""

    kind: str
    name: str  # as written, e.g. "conv" for an aliased [convolutional]
    line: int
    path: str
    index: int = -1  # darknet layer index (-1 for [net])
    options: dict[str, tuple[str, int]] = field(default_factory=dict)

    def where(self, key: str | None = None) -> str:
        line = self.options[key][1] if key in self.options else self.line
        label = "[net]" if self.index < 0 else f"layer {self.index} [{self.name}]"
        return f"{self.path}:{line}: {label}"

    def error(self, message: str, key: str | None = None) -> CfgError:
        return CfgError(f"{self.where(key)}: {message}")

    def has(self, key: str) -> bool:
        return key in self.options

    def raw(self, key: str, default=None):
        if key not in self.options:
            if default is _REQUIRED:
                raise self.error(f"missing option {key}=")
            return default
        return self.options[key][0]

    def int(self, key: str, default=None, minimum: int | None = None) -> int:
        value = self.raw(key, default)
        if key in self.options:
            try:
                value = int(value, 10)
            except ValueError:
                raise self.error(f"{key}={value!r} is not a whole number", key) from None
            if not INT_MIN <= value <= INT_MAX:
                raise self.error(f"{key}={value} is out of range (darknet reads a 32-bit int)", key)
        if minimum is not None and value is not None and value < minimum:
            raise self.error(f"{key}={value} must be at least {minimum}", key)
        return value

    def float(self, key: str, default=None) -> float:
        text = self.raw(key, default)
        if key not in self.options:
            return text
        try:
            value = float(text)
        except ValueError:
            raise self.error(f"{key}={text!r} is not a number", key) from None
        if not math.isfinite(value):
            raise self.error(f"{key}={text!r} must be a finite number", key)
        return value

    def str(self, key: str, default=None) -> str:
        return self.raw(key, default)

    def ints(self, key: str, default=None) -> list[int]:
        value = self.raw(key, default)
        if key not in self.options:
            return value
        try:
            out = [int(v, 10) for v in value.rstrip(",").split(",")]
        except ValueError:
            raise self.error(f"{key}={value!r} is not a comma-separated list of whole numbers", key) from None
        if not all(INT_MIN <= v <= INT_MAX for v in out):
            raise self.error(f"{key}={value!r} is out of range (darknet reads 32-bit ints)", key)
        return out

    def floats(self, key: str, default=None) -> list[float]:
        value = self.raw(key, default)
        if key not in self.options:
            return value
        try:
            out = [float(v) for v in value.rstrip(",").split(",")]
        except ValueError:
            raise self.error(f"{key}={value!r} is not a comma-separated list of numbers", key) from None
        if not all(math.isfinite(v) for v in out):
            raise self.error(f"{key}={value!r} must hold finite numbers", key)
        return out


INT_MIN, INT_MAX = -(2**31), 2**31 - 1
_REQUIRED = object()
REQUIRED = _REQUIRED  # pass as ``default`` to make an option mandatory


@dataclass
class Cfg:
    """A parsed cfg: the ``[net]`` section and the layers in darknet order (index 0 first)."""

    path: str
    net: Section
    layers: list[Section]

    @property
    def name(self) -> str:
        return Path(self.path).name


_WHITESPACE = str.maketrans("", "", " \t\r\n\v\f")


def parse_text(text: str, path: str = "<cfg>") -> Cfg:
    """Parse cfg text; ``path`` is only used in messages. A leading UTF-8 byte-order mark (Windows
    editors write one) is dropped, as it would otherwise make ``[net]`` an unknown section."""
    sections: list[Section] = []
    lines = text.removeprefix("\ufeff").split("\n")
    last = max(1, len(lines) - (lines[-1] == ""))  # the file's last line, for errors about its end
    for lineno, line in enumerate(lines, start=1):
        line = line.translate(_WHITESPACE)
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(f"{path}:{lineno}: malformed section header {line!r}; write it as [name]")
            name = line[1:-1]
            if name not in SECTION_ALIASES:
                known = ", ".join(f"[{k}]" for k in sorted(set(SECTION_ALIASES.values())))
                raise CfgError(f"{path}:{lineno}: unknown section [{name}]; cspnet reads {known}")
            sections.append(Section(SECTION_ALIASES[name], name, lineno, path))
            continue
        if not sections:
            raise CfgError(f"{path}:{lineno}: option {line!r} before the first [section]")
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise CfgError(f"{path}:{lineno}: expected key=value, got {line!r}")
        value = value.split("#", 1)[0]
        sec = sections[-1]
        allowed = READ[sec.kind] | TRAINING_ONLY.get(sec.kind, set()) | (
            _LAYER_TRAINING if sec.kind != "net" else set())
        if key not in allowed:
            raise CfgError(
                f"{path}:{lineno}: unknown option {key!r} in [{sec.name}]; cspnet reads "
                f"{', '.join(sorted(READ[sec.kind])) or 'no options there'} (plus darknet's training-only ones)"
            )
        sec.options.setdefault(key, (value, lineno))
    if not sections:
        raise CfgError(f"{path}:{last}: no sections up to the end of the file; a darknet cfg starts with [net]")
    if sections[0].kind != "net":
        raise CfgError(f"{path}:{sections[0].line}: the first section must be [net], not [{sections[0].name}]")
    for i, sec in enumerate(sections[1:]):
        if sec.kind == "net":
            raise CfgError(f"{path}:{sec.line}: a second [net] section (layer {i})")
        sec.index = i
    if len(sections) == 1:
        raise CfgError(f"{path}:{last}: [net] (line {sections[0].line}) but no layers up to the end of the file")
    return Cfg(path, sections[0], sections[1:])


def parse_cfg(path) -> Cfg:
    """Parse a darknet .cfg file (syntax and option names; values are checked by :func:`build`)."""
    data = read_bytes(path, "cfg", CfgError)
    return parse_text(data.decode("utf-8", errors="replace"), str(Path(path)))
