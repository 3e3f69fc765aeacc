"""Which real images of a class each match uses."""

from dream_pl.samplers.base import Sampler, SelectionSampler
from dream_pl.samplers.coreset import HerdingSampler, KCenterSampler
from dream_pl.samplers.random import RandomSampler
from dream_pl.samplers.representative import RepresentativeSampler

__all__ = [
    "HerdingSampler",
    "KCenterSampler",
    "RandomSampler",
    "RepresentativeSampler",
    "Sampler",
    "SelectionSampler",
]
