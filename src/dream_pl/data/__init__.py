"""Real datasets: static specs, offline-first loaders and the per-class real set."""

from dream_pl.data.realset import RealSet
from dream_pl.data.sources import DatasetNotFoundError, RealData, load_dataset
from dream_pl.data.specs import DATASETS, DatasetSpec, get_spec

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "DatasetSpec",
    "RealData",
    "RealSet",
    "get_spec",
    "load_dataset",
]
