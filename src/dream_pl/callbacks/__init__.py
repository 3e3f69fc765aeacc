"""Lightning callbacks: when to cluster, what to export."""

from dream_pl.callbacks.clustering import ClusteringCallback
from dream_pl.callbacks.export import SyntheticExport

__all__ = ["ClusteringCallback", "SyntheticExport"]
