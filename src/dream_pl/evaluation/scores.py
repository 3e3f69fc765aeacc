"""A set's accuracy relative to random real images and to the whole training set: IOR, HLR, LRS.

An accuracy alone does not say how much of the way from "pick images at random" to "keep every image" a
set goes, and depends on the protocol. The scores below compare a set with the two references trained under
the same protocol (random real images of the same IPC) and on every training image (the whole-set
reference, :mod:`dream_pl.evaluation.references`), as DD-Ranking does for hard labels:

* IOR (improvement over random) = acc(set) - acc(random real, same IPC, same protocol), in points;
* HLR (hard-label recovery) = acc(whole set) - acc(set), in points (the distance left to the whole set);
* each as a fraction of the whole-to-random gap, acc(whole) - acc(random) (IOR + HLR = the gap);
* LRS (label-robust score) = (e^alpha - e^-1) / (e - e^-1), alpha = w * IOR - (1 - w) * HLR, w = 0.5, with
  IOR and HLR as FRACTIONS of accuracy in [0, 1]: alpha lies in [-1, 1] and LRS in [0, 1]. DD-Ranking 0.2.0
  feeds percent values into the exponential, which saturates the score; these are not its numbers.

A reference that was not measured makes its scores "not measured", never a number taken from a paper.
"""

from __future__ import annotations

import math
from typing import Any

from dream_pl.evaluation.sets import WHOLE, is_random_baseline

NOT_MEASURED = "not measured"  # a score whose reference (random real images, whole set) was not trained
UNDEFINED = "undefined"  # a fraction of a gap that is not positive (the whole set no better than random)
LRS_WEIGHT = 0.5  # w of the LRS: IOR and HLR weigh alike
SCORE_KEYS = ("random_mean", "whole_mean", "ior", "hlr", "ior_of_gap", "hlr_of_gap", "lrs")


def improvement_over_random(acc: float, random: float) -> float:
    """IOR: how far ``acc`` is above random real images of the same IPC (same unit as the inputs)."""
    return acc - random


def hard_label_recovery(acc: float, whole: float) -> float:
    """HLR: how far ``acc`` is below the whole training set (same unit as the inputs)."""
    return whole - acc


def share_of_gap(points: float, random: float, whole: float) -> float | None:
    """``points`` as a fraction of the whole-to-random gap; None when the gap is not positive.

    A whole set no better than random images means the reference did not train (too few epochs, a broken
    run): a fraction of it would only mislead.
    """
    gap = whole - random
    return points / gap if gap > 0 else None


def label_robust_score(ior: float, hlr: float, weight: float = LRS_WEIGHT) -> float:
    """LRS of IOR and HLR given as FRACTIONS (differences of accuracies in [0, 1], not percent).

    ``(exp(alpha) - exp(-1)) / (e - exp(-1))`` with ``alpha = weight * ior - (1 - weight) * hlr``: alpha
    lies in [-1, 1], so the score in [0, 1]; a set as good as random images and as the whole set
    (IOR = HLR = 0) scores (1 - e^-1) / (e - e^-1) = 0.269, and every point gained on either side raises it.
    """
    alpha = weight * ior - (1 - weight) * hlr
    return (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))


def relative_scores(acc: float, random: float | None, whole: float | None) -> dict[str, Any]:
    """Every score of a set with mean top-1 ``acc`` against its references, all accuracies in PERCENT.

    Returns :data:`SCORE_KEYS`: the references' means, IOR and HLR in points, their fractions of the gap,
    and the LRS (computed on fractions of accuracy); a score whose reference is None is
    :data:`NOT_MEASURED`, a fraction of a non-positive gap :data:`UNDEFINED`.
    """
    ior = None if random is None else improvement_over_random(acc, random)
    hlr = None if whole is None else hard_label_recovery(acc, whole)
    scores: dict[str, Any] = {"random_mean": random, "whole_mean": whole, "ior": ior, "hlr": hlr}
    if ior is None or hlr is None:
        scores.update(ior_of_gap=None, hlr_of_gap=None, lrs=None)
    else:
        ior_share, hlr_share = share_of_gap(ior, random, whole), share_of_gap(hlr, random, whole)
        scores.update(
            ior_of_gap=UNDEFINED if ior_share is None else ior_share,
            hlr_of_gap=UNDEFINED if hlr_share is None else hlr_share,
            lrs=label_robust_score(ior / 100, hlr / 100),
        )
    return {key: NOT_MEASURED if value is None else value for key, value in scores.items()}


def is_number(value: object) -> bool:
    """Whether a score is a measured number (not :data:`NOT_MEASURED`, :data:`UNDEFINED` or missing)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_reference(label: str) -> bool:
    """Whether a row's set is a reference the scores are stated against (random real images, whole set)."""
    return is_random_baseline(label) or label == WHOLE


def score_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with :func:`relative_scores` added to every row that is not a reference.

    The references are rows of the same list and architecture: random real images (at most one IPC per
    evaluation) and the whole real set; a reference that is not among them makes its scores "not measured".
    """
    random = {r["model"]: r["mean"] for r in rows if is_random_baseline(r["set"])}
    whole = {r["model"]: r["mean"] for r in rows if r["set"] == WHOLE}
    return [
        r
        if is_reference(r["set"])
        else {**r, **relative_scores(r["mean"], random.get(r["model"]), whole.get(r["model"]))}
        for r in rows
    ]
