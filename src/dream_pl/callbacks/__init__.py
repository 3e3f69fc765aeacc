"""Lightning callbacks: what to export, how to show progress, where to draw diagnostics."""

from dream_pl.callbacks.diagnostics import DiagnosticsHistograms
from dream_pl.callbacks.export import SyntheticExport
from dream_pl.callbacks.periodic_eval import PeriodicEvaluation
from dream_pl.callbacks.progress import DistillProgressBar, progress_text

__all__ = [
    "DiagnosticsHistograms",
    "DistillProgressBar",
    "PeriodicEvaluation",
    "SyntheticExport",
    "progress_text",
]
