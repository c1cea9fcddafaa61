"""The paper's Section 3.1 argument, measured: how much of the gradient a stage's shared tensor gets
is the same information sent back by several of the layers that read it.

In a dense block, layer k reads ``[x0, x1, ..., x_{k-1}]``, so the gradient of the loss with
respect to the block's input ``x0`` is the sum of one *contribution* per consumer: each dense
layer's gradient with respect to the ``x0`` channels of its own input, plus the block output's
(what the transition after the block sends back). The paper (Eq. 1-2) calls that gradient
"duplicated" because every layer's weights are updated from the same reused ``g0``; where the
consumers' contributions point the same way, much of ``g0`` is one signal counted many times.
CSP (Eq. 3-4) lets only part of the base layer enter the block: the bypass part gets its gradient
from the concatenation alone.

What is measured, per stage, on the stage's base tensor ``X`` (the output of its base layer,
which the dense layers, the block output and, in a CSP stage, the bypass read):

- each consumer's contribution to ``dL/dX``, per sample (flattened to one vector): a dense
  layer's gradient on the ``x0`` channels of its input, and the block output's, each carried to
  ``X`` by autograd through the split (so nothing here assumes where the bypass channels are);
  a CSP stage's bypass contribution is what reaches ``X`` other than through the blocks;
- the cosine similarity of every pair of consumers' contributions, per sample, averaged over the
  samples: the consumer x consumer matrix (1 on the diagonal);
- the **duplicated share** of the stage's gradient: the cross terms' part of its squared norm,
  ``sum_{a != b} <g_a, g_b> / ||sum_a g_a||^2`` over all samples (0 when the consumers'
  contributions are orthogonal, ``1 - 1/K`` when K consumers send the same vector);
- checks: the gradient not accounted for by the consumers (0 up to rounding), and in a CSP stage
  with a channel slice the share of ``||dL/dX||`` the block consumers send into the bypass
  channels (0: the paper's "truncated gradient flow").

A stage of residual blocks has one shared path instead: each block's residual branch reads the
stream and adds its gradient to it; the consumers are the branches (their gradients at their
inputs, one per block that keeps the stream's shape) and the stage output.

Gradients are those of a training step: BatchNorm uses the batch statistics (its running
statistics are left as they were), dropout is off, the loss is the cross-entropy of the labels.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..csp import CrossStagePartial
from ..layers.dense import DenseBlock

OUT, BYPASS = "out", "bypass"


# --- generic: taps and the similarity statistics -----------------------------------------------


class Taps:
    """Aliases of the tensors some modules read (or write), recorded in the forward pass, so that
    ``torch.autograd.grad(loss, taps.tensors)`` gives the gradient through each of them alone.

    A forward pre-hook hands the module ``x.view_as(x)`` instead of ``x``: a tensor no other module
    reads, whose gradient is therefore this consumer's contribution only. ``where="output"`` does
    the same for what the module returns (its gradient is what all of its readers send back).
    """

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def add(self, key: str, module: nn.Module, where: str = "input") -> None:
        if where == "input":
            def pre(mod, args):
                x = args[0]
                if isinstance(x, torch.Tensor) and x.requires_grad:
                    alias = x.view_as(x)
                    self.tensors[key] = alias
                    return (alias, *args[1:])
                return None

            self._handles.append(module.register_forward_pre_hook(pre))
        elif where == "output":
            def post(mod, args, out):
                if isinstance(out, torch.Tensor) and out.requires_grad:
                    alias = out.view_as(out)
                    self.tensors[key] = alias
                    return alias
                return None

            self._handles.append(module.register_forward_hook(post))
        else:
            raise ValueError(f"where={where!r} must be 'input' or 'output'")

    def clear(self) -> None:
        self.tensors = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self.tensors = [], {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


@dataclass
class SimilarityStats:
    """Running per-sample statistics of K consumers' gradient contributions to one tensor.

    ``add(contributions)`` takes a (K, B, ...) tensor (or K tensors of one shape): consumer k's
    contribution for each of B samples. A consumer whose contribution to a sample is zero has
    cosine 0 with every other one there (and 0 on its diagonal for that sample).
    """

    names: list[str]
    cos_sum: torch.Tensor = field(init=False)
    gram_sum: torch.Tensor = field(init=False)
    samples: int = 0
    batch_shares: list[float] = field(default_factory=list)  # the duplicated share of each add()

    def __post_init__(self):
        k = len(self.names)
        self.cos_sum = torch.zeros(k, k, dtype=torch.float64)
        self.gram_sum = torch.zeros(k, k, dtype=torch.float64)

    def add(self, contributions) -> None:
        if not isinstance(contributions, torch.Tensor):
            contributions = torch.stack(list(contributions))
        k, b = contributions.shape[:2]
        if k != len(self.names):
            raise ValueError(f"{k} contributions for {len(self.names)} consumers")
        v = contributions.detach().reshape(k, b, -1).to("cpu", torch.float64)
        gram = torch.einsum("kbd,lbd->bkl", v, v)  # (B, K, K) per-sample dot products
        norms = gram.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()
        denom = norms[:, :, None] * norms[:, None, :]
        cos = torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))
        self.cos_sum += cos.sum(0)
        batch = gram.sum(0)
        self.gram_sum += batch
        self.samples += b
        total = float(batch.sum())
        if total > 0:
            self.batch_shares.append((total - float(batch.diagonal().sum())) / total)

    @property
    def similarity(self) -> torch.Tensor:
        """(K, K) mean per-sample cosine similarity."""
        return self.cos_sum / max(self.samples, 1)

    def mean_offdiag(self, keys: list[str] | None = None) -> float | None:
        """The mean cosine over the pairs of distinct consumers among ``keys`` (default all)."""
        idx = [self.names.index(n) for n in (keys or self.names)]
        if len(idx) < 2:
            return None
        m = self.similarity[idx][:, idx]
        return float((m.sum() - m.diagonal().sum()) / (len(idx) * (len(idx) - 1)))

    def duplicated_share(self) -> float | None:
        """The cross terms' part of the summed gradient's squared norm, over all samples."""
        total = float(self.gram_sum.sum())
        if total <= 0:
            return None
        return (total - float(self.gram_sum.diagonal().sum())) / total

    def own_share(self, key: str) -> float | None:
        """Consumer ``key``'s squared norm over the summed gradient's, over all samples."""
        total = float(self.gram_sum.sum())
        i = self.names.index(key)
        return float(self.gram_sum[i, i]) / total if total > 0 else None


# --- which tensors a model's stages share, and who reads them ---------------------------------


@dataclass
class StagePlan:
    """One stage's shared tensor and its consumers' taps (keys into :class:`Taps`)."""

    index: int
    kind: str  # "dense" or "residual"
    fusion: str
    consumers: list[str]  # display names, in order (layers, then out, then bypass)
    bypass_slice: slice | None = None  # X's bypass channels (CSP with split="slice")
    x0_slices: list[slice] = field(default_factory=list)  # dense: where x0 sits in each consumer's tensor

    def key(self, name: str) -> str:
        return f"s{self.index}:{name}"


def _dense_block(stage) -> DenseBlock | None:
    blocks = getattr(stage, "blocks", None)
    return blocks if isinstance(blocks, DenseBlock) else None


def _residual_blocks(stage) -> list[nn.Module]:
    blocks = getattr(stage, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) and all(hasattr(b, "conv1") for b in blocks):
        return list(blocks)
    return []


def plan_stages(model: nn.Module, taps: Taps) -> list[StagePlan]:
    """A plan per measurable stage of ``model.stages`` (dense or residual blocks inside a
    :class:`CrossStagePartial`), with the taps registered on ``taps``."""
    stages = getattr(model, "stages", None)
    if stages is None:
        raise ValueError(f"{type(model).__name__} has no stages to measure")
    plans = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, CrossStagePartial):
            continue
        dense = _dense_block(stage)
        if dense is not None:
            plans.append(_plan_dense(i, stage, dense, taps))
            continue
        blocks = _residual_blocks(stage)
        if blocks:
            plans.append(_plan_residual(i, stage, blocks, taps))
    return plans


def _plan_dense(i: int, stage: CrossStagePartial, block: DenseBlock, taps: Taps) -> StagePlan:
    c0 = block.in_chs
    names, slices = [], []
    chs = c0
    for k, layer in enumerate(block.layers):
        names.append(f"L{k + 1}")
        slices.append(slice(chs - c0, chs) if block.new_first else slice(0, c0))
        chs += layer.out_chs
    names.append(OUT)
    slices.append(slice(block.out_chs - c0, block.out_chs) if block.new_first else slice(0, c0))
    plan = StagePlan(i, "dense", stage.fusion, names, x0_slices=slices)
    for name, layer in zip(names, block.layers, strict=False):
        taps.add(plan.key(name), layer, "input")
    taps.add(plan.key(OUT), block, "output")
    taps.add(plan.key("x0"), block, "input")
    taps.add(plan.key("X"), stage.down, "output")
    if stage.fusion != "none":
        plan.consumers.append(BYPASS)
        if stage.split_mode == "slice":
            plan.bypass_slice = slice(0, stage.bypass_chs)
    return plan


def _plan_residual(i: int, stage: CrossStagePartial, blocks: list[nn.Module], taps: Taps) -> StagePlan:
    plan = StagePlan(i, "residual", stage.fusion, [])
    for k, block in enumerate(blocks):
        name = f"B{k + 1}"
        plan.consumers.append(name)
        taps.add(plan.key(name), block.conv1, "input")
    plan.consumers.append(OUT)
    taps.add(plan.key(OUT), stage.blocks, "output")
    return plan


# --- measuring --------------------------------------------------------------------------------


@dataclass
class StageResult:
    """What one stage's consumers sent back, over all the batches measured."""

    plan: StagePlan
    stats: SimilarityStats
    unaccounted: list[float] = field(default_factory=list)  # per batch: ||dL/dX - sum of consumers|| / ||dL/dX||
    block_on_bypass: list[float] = field(default_factory=list)  # per batch: block consumers' share on the bypass

    def summary(self) -> dict:
        s, p = self.stats, self.plan
        blocks = [n for n in s.names if n != BYPASS]
        return {
            "stage": p.index, "kind": p.kind, "fusion": p.fusion, "consumers": list(s.names),
            "samples": s.samples,
            "similarity": [[round(float(v), 6) for v in row] for row in s.similarity],
            "mean_cos": s.mean_offdiag(),
            "mean_cos_blocks": s.mean_offdiag(blocks),
            "duplicated_share": s.duplicated_share(),
            "duplicated_share_batches": [round(v, 6) for v in s.batch_shares],
            "bypass_share": s.own_share(BYPASS) if BYPASS in s.names else None,
            "unaccounted": max(self.unaccounted) if self.unaccounted else None,
            "block_grad_on_bypass": max(self.block_on_bypass) if self.block_on_bypass else None,
        }


def _norm_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    nb = float(b.norm())
    return float(a.norm()) / nb if nb > 0 else 0.0


def _stage_contributions(plan: StagePlan, grads: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                         result: StageResult) -> torch.Tensor | None:
    """The (K, B, ...) contributions of ``plan``'s consumers, checks recorded on ``result``."""
    if plan.kind == "residual":
        keys = [plan.key(n) for n in plan.consumers]
        if any(k not in grads for k in keys):
            return None
        shape = grads[plan.key(OUT)].shape
        kept = [(n, grads[plan.key(n)]) for n in plan.consumers if grads[plan.key(n)].shape == shape]
        if [n for n, _ in kept] != result.stats.names:
            return None
        return torch.stack([g for _, g in kept])

    x_key, x0_key = plan.key("X"), plan.key("x0")
    if x_key not in grads or x0_key not in grads:
        return None
    X, x0, total = tensors[x_key], tensors[x0_key], grads[x_key]
    block_names = [n for n in plan.consumers if n != BYPASS]
    in_x0 = [grads[plan.key(n)][:, sl] for n, sl in zip(block_names, plan.x0_slices, strict=True)]
    # carry each x0-space contribution to X through the split (a slice or the split conv) by autograd
    mapped = [torch.autograd.grad(x0, X, g, retain_graph=True)[0] for g in in_x0]
    contributions = list(mapped)
    blocks_sum = torch.stack(mapped).sum(0)
    rest = total - blocks_sum
    if BYPASS in plan.consumers:
        contributions.append(rest)
        if plan.bypass_slice is not None:
            part = torch.ones(X.shape[1], dtype=torch.bool, device=X.device)
            part[plan.bypass_slice] = False
            result.unaccounted.append(_norm_ratio(rest[:, part], total))
            result.block_on_bypass.append(_norm_ratio(blocks_sum[:, plan.bypass_slice], total))
    else:
        result.unaccounted.append(_norm_ratio(rest, total))
    return torch.stack(contributions)


@contextlib.contextmanager
def training_gradients(model: nn.Module):
    """The model as a training step computes gradients (BatchNorm on batch statistics, dropout
    off), with its running statistics and modes restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    momenta = {}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            momenta[m] = m.momentum
            m.momentum = 0.0  # running = (1 - 0) * running: left unchanged
        elif isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    try:
        yield model
    finally:
        for m, mom in momenta.items():
            m.momentum = mom
        for m, mode in modes.items():
            m.training = mode


class GradientProbe:
    """Measures ``model``'s stages batch by batch (:meth:`add_batch`), then :meth:`results`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.taps = Taps()
        self.plans = plan_stages(model, self.taps)
        if not self.plans:
            self.taps.remove()
            raise ValueError(f"{getattr(model, 'model_name', None) or type(model).__name__} has no dense or "
                             "residual stage (CrossStagePartial with a DenseBlock or residual blocks) to measure")
        self._results = [StageResult(p, SimilarityStats(list(p.consumers))) for p in self.plans]
        self._residual_checked = False

    def add_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        """One forward and backward pass; returns the batch's loss."""
        self.taps.clear()
        with training_gradients(self.model):
            loss = F.cross_entropy(self.model(inputs), targets)
        keys = list(self.taps.tensors)
        grads = dict(zip(keys, torch.autograd.grad(loss, [self.taps.tensors[k] for k in keys], retain_graph=True,
                                                    allow_unused=True), strict=True))
        grads = {k: g for k, g in grads.items() if g is not None}
        for res in self._results:
            if not self._residual_checked and res.plan.kind == "residual":
                self._fit_residual(res, grads)
            contributions = _stage_contributions(res.plan, grads, self.taps.tensors, res)
            if contributions is not None:
                res.stats.add(contributions)
        self._residual_checked = True
        self.taps.clear()
        return float(loss.detach())

    def _fit_residual(self, res: StageResult, grads: dict) -> None:
        """Keep the residual consumers whose input has the stream's shape (a widening or strided
        first block reads another tensor)."""
        plan = res.plan
        out = grads.get(plan.key(OUT))
        if out is None:
            return
        kept = [n for n in plan.consumers if plan.key(n) in grads and grads[plan.key(n)].shape == out.shape]
        res.stats = SimilarityStats(kept)

    def results(self) -> list[StageResult]:
        """The stages measured (a stage with fewer than two consumers of one tensor has nothing to compare)."""
        return [r for r in self._results if r.stats.samples > 0 and len(r.stats.names) >= 2]

    def close(self) -> None:
        self.taps.remove()


def measure(model: nn.Module, batches, device: torch.device | str = "cpu", progress=None) -> list[dict]:
    """Per-stage summaries (:meth:`StageResult.summary`) of ``model`` over ``batches`` of
    ``{"inputs", "targets"}`` (or ``(inputs, targets)`` pairs); ``progress(loss)`` after each."""
    model.to(device)
    probe = GradientProbe(model)
    try:
        for batch in batches:
            x, y = (batch["inputs"], batch["targets"]) if isinstance(batch, dict) else batch
            loss = probe.add_batch(x.to(device), y.to(device))
            if progress is not None:
                progress(loss)
        return [r.summary() for r in probe.results()]
    finally:
        probe.close()


def model_summary(stages: list[dict]) -> dict:
    """The stages' mean duplicated share and mean block-consumer cosine (dense stages first)."""
    def mean(key):
        vals = [s[key] for s in stages if s[key] is not None]
        return sum(vals) / len(vals) if vals else None

    return {"duplicated_share": mean("duplicated_share"), "mean_cos": mean("mean_cos"),
            "mean_cos_blocks": mean("mean_cos_blocks"), "stages": len(stages)}
