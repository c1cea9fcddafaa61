"""The one idea of the paper: make a stage of blocks cross-stage-partial.

    down -> split -> blocks -> partial transition -> concat -> transition

Every CSP stage of every model in cspnet (darknet's, timm's, DenseNet/PeleeNet, the user's own)
is a :class:`CrossStagePartial` with different settings; the plain single-path stage of the
baseline networks is the same class with ``fusion="none"``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from .layers import BnActConv, ConvBnAct, check_act

FUSIONS = ("none", "first", "last", "full")
SPLITS = ("slice", "conv", "two_conv")
CONCAT_ORDERS = ("bypass_first", "blocks_first")
POOL_POSITIONS = ("end", "before_transition")
TRANSITIONS = ("auto", "always", "never")

BlockFactory = Callable[..., nn.Module]


def _choice(value, allowed, arg):
    if value not in allowed:
        raise ValueError(f"{arg}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    return value


def _positive(value, arg):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{arg}={value!r} must be a positive number of channels")
    return value


def out_channels(module: nn.Module, in_chs: int) -> int:
    """Channels a block stack produces: its ``out_chs`` attribute, else its input width."""
    return int(getattr(module, "out_chs", in_chs))


class CrossStagePartial(nn.Module):
    """A stage of blocks made cross-stage-partial (CSPNet, Fig. 2-3).

    The stage input (after the optional strided base layer ``down``) is split in two parts: one
    goes through ``make_blocks`` and a partial transition, the other bypasses them, and the two are
    concatenated and fused by a transition.

    Args:
        in_chs: channels entering the stage.
        out_chs: channels leaving the stage.
        make_blocks: ``make_blocks(chs)`` returns the block stack for ``chs`` input channels (any
            ``nn.Module``). A stack whose width changes (dense blocks) says so with an ``out_chs``
            attribute. Factories that accept ``in_chs=`` may be asked for a stack whose first block
            widens ``in_chs`` to ``chs`` (darknet's uneven first stage, and the baselines).
        gamma: the partial ratio, **the share of the split channels that bypass the blocks** (x0' in
            the paper's Eq. 3). The paper never defines its direction; this reading reproduces its
            Table 1 cost deltas (gamma = 0.25 costs least), see ``docs``/README. Any value in (0, 1).
        fusion: Fig. 3 of the paper: ``"full"`` (partial transition, concat, transition; CSPDenseNet),
            ``"first"`` (concat, then one transition), ``"last"`` (partial transition, then concat;
            no transition after it), ``"none"`` (the plain single-path stage: the baseline).
        stride: stride of the base layer; ``stride > 1`` adds a 3x3 conv ``in_chs -> down_chs``.
        down_chs / down_groups: width and groups of that conv (default: ``in_chs``, 1).
        down: a ready base-layer module instead (its output width is ``down_chs``).
        split: ``"conv"``: one 1x1 conv to ``hidden_chs`` then a channel split (timm);
            ``"two_conv"``: two 1x1 convs, one per part (the official darknet cfgs);
            ``"slice"``: split the base channels directly, no conv (CSPPeleeNet, CSPDenseNet).
        hidden_chs: width of the concatenation (both parts); default ``out_chs`` (``in`` for slice).
            In a plain stage (``fusion="none"``): the width its blocks run at (default: the base width).
        block_in_chs: ``split="two_conv"`` only: width given to the block path when it differs from
            the block width (darknet ``csresnext50.cfg`` layers 2-8: a 64-ch block input widened to
            128 by the first block, whose shortcut is then partial).
        block_chs: width the blocks run at; default the block part of the split
            (``fusion="none"``: the base width).
        transition_chs: output width of the partial transition; default the blocks' output width.
        act / split_act: activation of the convs the stage adds / of the split convs (darknet
            ``csresnext50.cfg`` stages 2-3 use ``"linear"`` there: timm's ``cross_linear``).
        concat: ``"bypass_first"`` (paper Eq. 3, timm ``CrossStage``) or ``"blocks_first"``
            (darknet ``[route] layers=-1,-N``, timm ``CrossStage3``, ultralytics C3).
        transition: the plain stage's transition (``fusion="none"``): ``"auto"`` adds a 1x1
            transition when the blocks' width differs from ``out_chs``; ``"always"`` (PeleeNet's
            width-keeping transition), ``"never"``. A CSP stage's transitions follow ``fusion``.
        pool: a down-sampling module that closes the stage (DenseNet/PeleeNet transition pooling).
        pool_position: ``"end"`` (after the transition) or ``"before_transition"`` (after the
            concat, so the final 1x1 runs at a quarter of the cost).
        preact: the 1x1 convs the stage adds are BN -> act -> conv (DenseNet-BC) instead of
            conv -> BN -> act.

    The settings of one form have no effect on the other (a plain stage has no split: ``gamma``,
    ``split``, ``concat``, ``split_act``, ``block_in_chs``, ``transition_chs``; a CSP stage ignores
    ``transition``), so a model family builds both forms of a stage with one call and an A/B
    comparison changes ``fusion`` alone.

    Example:
        >>> from torch import nn
        >>> stage = CrossStagePartial(64, 128, lambda c: nn.Conv2d(c, c, 3, padding=1), stride=2)
        >>> stage(torch.zeros(1, 64, 32, 32)).shape
        torch.Size([1, 128, 16, 16])
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        make_blocks: BlockFactory,
        *,
        gamma: float = 0.5,
        fusion: str = "full",
        stride: int = 1,
        down_chs: int | None = None,
        down_groups: int = 1,
        down: nn.Module | None = None,
        split: str = "conv",
        hidden_chs: int | None = None,
        block_in_chs: int | None = None,
        block_chs: int | None = None,
        transition_chs: int | None = None,
        act: str | None = "leaky",
        split_act: str | None = None,
        concat: str = "bypass_first",
        transition: str = "auto",
        pool: nn.Module | None = None,
        pool_position: str = "end",
        preact: bool = False,
    ):
        super().__init__()
        _positive(in_chs, "in_chs")
        _positive(out_chs, "out_chs")
        self.fusion = _choice(fusion, FUSIONS, "fusion")
        self.split_mode = _choice(split, SPLITS, "split")
        self.concat_order = _choice(concat, CONCAT_ORDERS, "concat")
        self.pool_position = _choice(pool_position, POOL_POSITIONS, "pool_position")
        _choice(transition, TRANSITIONS, "transition")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 < gamma < 1.0:
            raise ValueError(f"gamma={gamma!r} must be in (0, 1): the share of channels that bypass the blocks")
        if not callable(make_blocks):
            raise ValueError(f"make_blocks={make_blocks!r} must be a callable returning an nn.Module")
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride={stride!r} must be a positive integer")
        act = check_act(act)
        split_act = act if split_act is None else check_act(split_act, "split_act")
        unit = BnActConv if preact else ConvBnAct
        self.in_chs, self.out_chs, self.gamma = in_chs, out_chs, float(gamma)

        # base layer
        base_chs = _positive(down_chs, "down_chs") if down_chs is not None else in_chs
        if down is not None:
            self.down = down
        elif stride > 1:
            self.down = unit(in_chs, base_chs, 3, stride, groups=down_groups, act=act)
        else:
            if base_chs != in_chs:
                raise ValueError(f"down_chs={down_chs} needs stride > 1 or a down module (in_chs={in_chs})")
            self.down = nn.Identity()

        if self.fusion == "none":
            self._init_single_path(base_chs, out_chs, make_blocks, block_chs or hidden_chs, unit, act, transition,
                                   pool)
            return

        # split
        if hidden_chs is None:
            hidden_chs = base_chs if split == "slice" else out_chs
        _positive(hidden_chs, "hidden_chs")
        if split == "slice" and hidden_chs != base_chs:
            raise ValueError(f"split='slice' needs hidden_chs == base width ({base_chs}), got {hidden_chs}")
        self.bypass_chs = int(round(self.gamma * hidden_chs))
        part_chs = hidden_chs - self.bypass_chs
        if self.bypass_chs < 1 or part_chs < 1:
            raise ValueError(f"gamma={gamma} leaves no channels on one side of a {hidden_chs}-channel split")
        if block_in_chs is not None and split != "two_conv":
            raise ValueError("block_in_chs needs split='two_conv' (a slice cannot be uneven)")
        block_in = part_chs if block_in_chs is None else _positive(block_in_chs, "block_in_chs")
        self.split_sizes = (self.bypass_chs, part_chs)
        if split == "conv":
            self.split = unit(base_chs, hidden_chs, 1, act=split_act)
        elif split == "two_conv":
            self.split_bypass = unit(base_chs, self.bypass_chs, 1, act=split_act)
            self.split_blocks = unit(base_chs, block_in, 1, act=split_act)

        # blocks and transitions
        width = part_chs if block_chs is None else _positive(block_chs, "block_chs")
        self.blocks = _call_factory(make_blocks, width, block_in)
        blocks_out = out_channels(self.blocks, width)
        if self.fusion in ("full", "last"):
            t_chs = blocks_out if transition_chs is None else _positive(transition_chs, "transition_chs")
            if self.fusion == "last":
                t_chs = out_chs - self.bypass_chs
                if t_chs < 1:
                    raise ValueError(f"fusion='last' needs out_chs={out_chs} > bypass channels {self.bypass_chs}")
            self.partial_transition = unit(blocks_out, t_chs, 1, act=act)
        else:
            t_chs = blocks_out
            self.partial_transition = nn.Identity()
        concat_chs = self.bypass_chs + t_chs
        if self.fusion == "last":
            self.transition = nn.Identity()
        else:
            self.transition = unit(concat_chs, out_chs, 1, act=act)
        self.pool = pool if pool is not None else nn.Identity()

    def _init_single_path(self, base_chs, out_chs, make_blocks, block_chs, unit, act, transition, pool):
        self.bypass_chs = 0
        width = base_chs if block_chs is None else _positive(block_chs, "block_chs")
        self.blocks = _call_factory(make_blocks, width, base_chs)
        blocks_out = out_channels(self.blocks, width)
        need = transition == "always" or (transition == "auto" and blocks_out != out_chs)
        if transition == "never" and blocks_out != out_chs:
            raise ValueError(f"transition='never' but the blocks give {blocks_out} channels, not out_chs={out_chs}")
        self.transition = unit(blocks_out, out_chs, 1, act=act) if need else nn.Identity()
        self.pool = pool if pool is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        if self.fusion == "none":
            x = self.blocks(x)
        else:
            bypass, part = self._split(x)
            part = self.partial_transition(self.blocks(part))
            x = torch.cat([bypass, part] if self.concat_order == "bypass_first" else [part, bypass], dim=1)
        if self.pool_position == "before_transition":
            return self.transition(self.pool(x))
        return self.pool(self.transition(x))

    @property
    def output_unit(self) -> str | None:
        """The attribute holding the conv whose output is the stage's output, if any (what
        :func:`cspnet.inference.fuse.presplit_slices` may cut in two for the next stage)."""
        last_is_transition = self.pool_position == "before_transition" or isinstance(self.pool, nn.Identity)
        return "transition" if last_is_transition and not isinstance(self.transition, nn.Identity) else None

    def _split(self, x):
        if isinstance(x, tuple):  # already split by the conv that produced it (inference.fuse.presplit_slices)
            return x
        if self.split_mode == "two_conv":
            return self.split_bypass(x), self.split_blocks(x)
        if self.split_mode == "conv":
            x = self.split(x)
        return x[:, : self.bypass_chs], x[:, self.bypass_chs :]

    def extra_repr(self):
        return f"in_chs={self.in_chs}, out_chs={self.out_chs}, gamma={self.gamma}, fusion={self.fusion!r}"


def _call_factory(make_blocks: BlockFactory, chs: int, in_chs: int) -> nn.Module:
    if in_chs == chs:
        blocks = make_blocks(chs)
    else:
        try:
            accepts = "in_chs" in inspect.signature(make_blocks).parameters
        except (TypeError, ValueError):
            accepts = False
        if not accepts:
            raise ValueError(
                f"the stage feeds {in_chs} channels to blocks of width {chs}; "
                "make_blocks must accept in_chs= for that"
            )
        blocks = make_blocks(chs, in_chs=in_chs)
    if not isinstance(blocks, nn.Module):
        raise ValueError(f"make_blocks returned {type(blocks).__name__}, not an nn.Module")
    return blocks


class BlockStack(nn.Sequential):
    """``depth`` blocks in sequence, block i made by ``block_fn(i, in_chs, out_chs)``; the first
    one may widen ``in_chs`` to ``chs``."""

    def __init__(
        self, block_fn: Callable[[int, int, int], nn.Module], chs: int, depth: int, in_chs: int | None = None
    ):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth={depth!r} must be a positive integer")
        first_in = chs if in_chs is None else in_chs
        super().__init__(*[block_fn(i, first_in if i == 0 else chs, chs) for i in range(depth)])
        self.out_chs = chs


class ConcatStack(nn.Module):
    """Blocks in sequence whose input and every output are concatenated (ultralytics' C2f path).

    With ``CrossStagePartial(split="conv", fusion="first")`` this gives C2f: the output width is
    ``chs * (depth + 1)``.
    """

    def __init__(self, block_fn: Callable[[int], nn.Module], chs: int, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList([block_fn(chs) for _ in range(depth)])
        self.out_chs = chs * (depth + 1)

    def forward(self, x):
        outs = [x]
        for block in self.blocks:
            outs.append(block(outs[-1]))
        return torch.cat(outs, dim=1)


# Settings that reproduce the CSP stages of other projects (see README "cspify").
PRESETS: dict[str, dict] = {
    # the paper's CSPDenseNet / CSPResNeXt stage, as the darknet cfgs write it
    "darknet": dict(split="two_conv", fusion="full", concat="blocks_first"),
    # timm CrossStage (cspresnet50, cspresnext50, cspdarknet53)
    "timm_cross_stage": dict(split="conv", fusion="full", concat="bypass_first"),
    # timm CrossStage3 (cs3darknet) = YOLOv5/ultralytics C3: no partial transition
    "timm_cross_stage3": dict(split="conv", fusion="first", concat="blocks_first"),
    "ultralytics_c3": dict(split="two_conv", fusion="first", concat="blocks_first"),
    # ultralytics C2f: the blocks' input and every block output are concatenated (ConcatStack)
    "ultralytics_c2f": dict(split="conv", fusion="first", concat="bypass_first", stack="concat"),
}


def cspify(
    block_fn: Callable[[int], nn.Module],
    in_chs: int,
    out_chs: int,
    depth: int = 1,
    *,
    preset: str | None = None,
    **kwargs,
) -> CrossStagePartial:
    """Make a stage of ``depth`` user blocks cross-stage-partial.

    ``block_fn(chs)`` builds one block that keeps its width (any residual block). ``preset``
    selects the stage layout of another project (``PRESETS``); other keyword arguments are those of
    :class:`CrossStagePartial` and override the preset, plus ``stack="concat"`` to concatenate every
    block's output (C2f) instead of chaining them.

    Example:
        >>> from torch import nn
        >>> stage = cspify(lambda c: nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU()), 32, 64,
        ...                depth=2, gamma=0.5, fusion="last")
        >>> stage(torch.zeros(2, 32, 16, 16)).shape
        torch.Size([2, 64, 16, 16])
    """
    if not callable(block_fn):
        raise ValueError(f"block_fn={block_fn!r} must be a callable block_fn(chs) -> nn.Module")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth={depth!r} must be a positive integer")
    settings = dict(PRESETS[_choice(preset, tuple(PRESETS), "preset")]) if preset is not None else {}
    settings.update(kwargs)
    stack = _choice(settings.pop("stack", "sequential"), ("sequential", "concat"), "stack")

    def make_blocks(chs: int) -> nn.Module:
        if stack == "concat":
            return ConcatStack(block_fn, chs, depth)
        return nn.Sequential(*[block_fn(chs) for _ in range(depth)])

    return CrossStagePartial(in_chs, out_chs, make_blocks, **settings)
