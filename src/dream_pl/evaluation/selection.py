"""What evaluation may choose, and on what: the lr, on a validation split held out of the training set.

Protocols that pick the best epoch or grid-search the lr on the test set (MTT, DATM, DD-Ranking) report a
number selected on the data they are scored on. Here a choice (``evaluation.lr=auto``) is made on
``evaluation.validation_per_class`` training images per class that no baseline uses
(:func:`dream_pl.evaluation.sets.held_out`); the test set is read once, by the final networks, and the
reported number stays their last-epoch accuracy. Each row says what was chosen and on what.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace

from torch import Tensor

from dream_pl.evaluation.protocol import EvalProtocol, EvalResult


def pick_lr(scores: dict[float, float]) -> float:
    """The lr of the highest validation accuracy; a tie goes to the smaller lr (the less aggressive one)."""
    if not scores:
        raise ValueError("no learning rate was tried")
    return min(scores, key=lambda lr: (-scores[lr], lr))


def search_lr(
    train: Callable[..., EvalResult],
    images: Tensor,
    labels: Tensor,
    protocol: EvalProtocol,
    *,
    grid: Sequence[float],
    repeats: int,
    validation: tuple[Tensor, Tensor],
    on_epoch: Callable[[int], object] | None = None,
) -> tuple[float, dict[float, float]]:
    """Train ``repeats`` networks per lr of ``grid`` under ``protocol`` and score them on ``validation``.

    ``train(images, labels, protocol=..., test=..., on_epoch=...)`` is a set evaluator
    (:func:`dream_pl.evaluation.suite.set_evaluator`) told to test on the validation split. Returns the chosen
    lr and each lr's mean validation accuracy (%).
    """
    scores = {}
    for lr in grid:
        result = train(
            images,
            labels,
            protocol=replace(protocol, lr=float(lr), repeats=repeats),
            test=validation,
            on_epoch=on_epoch,
        )
        scores[float(lr)] = 100 * statistics.fmean(result.accuracies)
    return pick_lr(scores), scores


def selection_note(lr: float, scores: dict[float, float], per_class: int) -> str:
    """The protocol's addendum for a row whose lr was chosen: what, from what, on what."""
    tried = ", ".join(f"{k:g}: {v:.1f}" for k, v in scores.items())
    return (
        f"lr {lr:g} chosen on a validation split of {per_class} training images per class, never the test "
        f"set (validation top-1 per lr: {tried})"
    )
