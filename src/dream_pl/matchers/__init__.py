"""Matching losses between a real and a synthetic batch of one class."""

from dream_pl.matchers.distribution import DistributionMatcher, mean_embedding_distance
from dream_pl.matchers.gradient import (
    METRICS,
    GradientMatcher,
    gradient_distance,
    matched_parameters,
)

__all__ = [
    "METRICS",
    "DistributionMatcher",
    "GradientMatcher",
    "gradient_distance",
    "matched_parameters",
    "mean_embedding_distance",
]
