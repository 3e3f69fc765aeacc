"""Herding and k-center samplers: classic coreset rules on the matching network's features."""

from __future__ import annotations

from torch import Tensor

from dream_pl.coreset import herding, kcenter
from dream_pl.samplers.base import SelectionSampler


class _CoresetSampler(SelectionSampler):
    """A fixed-size selection per class, recomputed at every refresh; subclasses pick the rule."""

    def __init__(
        self,
        batch_size: int,
        embed_subset: int | None = None,
        embed_chunk: int = 512,
        features: str = "normalized",
    ) -> None:
        super().__init__(embed_subset=embed_subset, embed_chunk=embed_chunk, features=features)
        self.batch_size = batch_size


class HerdingSampler(_CoresetSampler):
    """Match against the class's herding selection of ``batch_size`` images."""

    def select(self, features: Tensor, *, seed: int) -> tuple[Tensor, dict[str, float]]:
        """Herding on the class's features."""
        del seed
        return herding(features, self.batch_size), {}


class KCenterSampler(_CoresetSampler):
    """Match against the class's greedy k-center selection of ``batch_size`` images."""

    def select(self, features: Tensor, *, seed: int) -> tuple[Tensor, dict[str, float]]:
        """Greedy k-center on the class's features."""
        return kcenter(features, self.batch_size, seed=seed), {}
