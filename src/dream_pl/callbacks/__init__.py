"""Lightning callbacks: when to cluster, what to export, how to show progress."""

from dream_pl.callbacks.clustering import ClusteringCallback
from dream_pl.callbacks.diagnostics import DiagnosticsCallback
from dream_pl.callbacks.export import SyntheticExport
from dream_pl.callbacks.periodic_eval import PeriodicEvaluation
from dream_pl.callbacks.progress import DistillProgressBar, progress_text

__all__ = [
    "ClusteringCallback",
    "DiagnosticsCallback",
    "DistillProgressBar",
    "PeriodicEvaluation",
    "SyntheticExport",
    "progress_text",
]
