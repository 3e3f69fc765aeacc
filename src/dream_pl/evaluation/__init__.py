"""Evaluating a synthetic set: fresh networks trained on it, tested on the real test set."""

from dream_pl.evaluation.protocol import EvalProtocol, EvalResult, evaluate_set
from dream_pl.evaluation.stacked import StackedClassifier, supports_stacking

__all__ = ["EvalProtocol", "EvalResult", "StackedClassifier", "evaluate_set", "supports_stacking"]
