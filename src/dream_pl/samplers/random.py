"""IDC's sampler: a fresh uniformly random real batch of the class for every match."""

from __future__ import annotations

import torch
from torch import Tensor

from dream_pl.data import RealSet
from dream_pl.samplers.base import Sampler


class RandomSampler(Sampler):
    """Random real batch of ``batch_size`` images per match (without replacement within a batch)."""

    def __init__(self, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"sampler.batch_size={batch_size} must be >= 1")
        self.batch_size = batch_size

    def indices(self, real: RealSet, c: int, generator: torch.Generator) -> Tensor:
        """A random batch of class ``c``."""
        return real.sample_class(c, self.batch_size, generator)
