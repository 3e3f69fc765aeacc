"""Keep Lightning's chatter out of a run's output, without hiding anything about the run."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Warnings that say nothing about the user's run (message regexes, matched from the start).
LIGHTNING_NOISE = (
    # concerns DataLoader worker processes; every loader here runs in-process
    r".*`IterableDataset` has `__len__` defined",
    # Lightning's own use of a torch API that torch 2.14 deprecates
    r".*isinstance\(treespec, LeafSpec\)",
    # assumes a manual-optimisation checkpoint wants the state before the step; a resume wants the state
    # after the step the checkpoint counts, which is what it writes
    r"Using ModelCheckpoint with manual optimization",
    # a resumed run's own checkpoint folder: the run lock and the resume check already rule out mixing
    r"Checkpoint directory .* exists and is not empty",
)


@contextmanager
def quiet_lightning(banners: bool = True) -> Iterator[None]:
    """Drop :data:`LIGHTNING_NOISE` warnings and, with ``banners``, Lightning's info lines.

    The evaluator fits many short networks per run (sets, repeats, curve points); each fit would print the
    device banner, a logger tip and a "max_epochs reached" line, burying the run's own output. Other
    warnings pass.
    """
    names = ("pytorch_lightning", "lightning_fabric") if banners else ()
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in LIGHTNING_NOISE:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
