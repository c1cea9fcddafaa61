"""What every family's builder shares: the checks on its stage rows, and the loop that chains its
stages after the stem into a :class:`~cspnet.models.classifier.Classifier`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..csp import FUSIONS
from .classifier import Classifier, stage_feature_info


def check_csp_row(i: int, gamma: float, fusion: str, default_gamma: float = 0.5) -> None:
    """A plain stage has no split, so a gamma other than the default there is a mistake."""
    if fusion not in FUSIONS:
        raise ValueError(f"stage {i}: fusion={fusion!r} is not allowed; choose one of {', '.join(FUSIONS)}")
    if fusion == "none" and gamma != default_gamma:
        raise ValueError(
            f"stage {i}: gamma={gamma!r} has no effect on a plain stage (fusion='none'); pass fusion='first', "
            f"'last' or 'full' with it, or gamma={default_gamma}"
        )


def check_csp_stages(csp_stages, n: int) -> None:
    if not isinstance(csp_stages, tuple) or any(
        isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in csp_stages
    ):
        raise ValueError(f"csp_stages={csp_stages!r} must be a tuple of stage indices in [0, {n - 1}]")


def chain_stages(
    stem: nn.Module,
    stem_reduction: int,
    rows: Sequence,
    make_stage: Callable[[int, object, int], tuple[nn.Module, int]],
    num_classes: int,
    csp_stages: tuple[int, ...] | None = None,
    make_final: Callable[[int], nn.Module] | None = None,
    **classifier_kw,
) -> Classifier:
    """Stage ``i`` is ``make_stage(i, rows[i], in_chs)`` -> ``(module, stride)``, fed the width of
    the stage before it (the stem's ``out_chs`` first; each module says its own ``out_chs``). Every
    row is checked first (a gamma on a plain stage, an unknown fusion); ``csp_stages`` (the stages a
    ``gamma=``/``fusion=`` override reaches) must index ``rows``. ``make_final(width)`` builds what
    runs after the last stage (a final norm); ``classifier_kw`` goes to the :class:`Classifier`
    (head, dropout)."""
    if csp_stages is not None:
        check_csp_stages(csp_stages, len(rows))
    prev, stages, levels = stem.out_chs, [], []
    for i, row in enumerate(rows):
        check_csp_row(i, row.gamma, row.fusion)
        stage, stride = make_stage(i, row, prev)
        stages.append(stage)
        levels.append((stage.out_chs, stride))
        prev = stage.out_chs
    info = stage_feature_info(stem.out_chs, stem_reduction, levels)
    final = make_final(prev) if make_final is not None else None
    return Classifier(stem, stages, info, num_classes, final=final, **classifier_kw)
