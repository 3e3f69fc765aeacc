"""Lightning callbacks: when to cluster, what to export."""

from dream_pl.callbacks.clustering import ClusteringCallback
from dream_pl.callbacks.diagnostics import DiagnosticsCallback
from dream_pl.callbacks.export import SyntheticExport
from dream_pl.callbacks.periodic_eval import PeriodicEvaluation

__all__ = ["ClusteringCallback", "DiagnosticsCallback", "PeriodicEvaluation", "SyntheticExport"]
