"""DistillProgressBar: Lightning's Rich bar counting outer/inner iterations instead of ``Epoch 0/-2``.

Distillation is one endless epoch stopped by ``max_steps = iterations * inner_loops``, so the stock bar's
epoch description and per-epoch batch count mean nothing there. This bar keeps everything of
:class:`~pytorch_lightning.callbacks.RichProgressBar` (columns, theme, metrics such as the module's
``loss``, the fallback without a terminal) and changes only what it counts: the run's inner steps.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

from dream_pl.engine import position


def progress_text(step: int, inner_loops: int, iterations: int) -> str:
    """The bar's description after ``step`` completed inner steps (``trainer.global_step``).

    Convention: ``outer`` is the 1-based outer iteration the last completed step belongs to and ``inner``
    how many of its ``inner_loops`` steps are done, so an outer iteration ends at ``inner L/L`` and the
    next step starts ``inner 1/L`` of the next one; before any step it reads ``outer 1/N · inner 0/L``.
    With ``inner_loops=3``, steps 3, 4 and 7 read ``outer 1/3 · inner 3/3``, ``outer 2/3 · inner 1/3``
    and ``outer 3/3 · inner 1/3``. Counters are right-aligned to the width of their totals, so the
    text (and the bar after it) does not shift as the numbers grow.

    Args:
        step: completed inner steps, ``>= 0``.
        inner_loops: inner steps per outer iteration, ``>= 1``.
        iterations: outer iterations of the run, ``>= 1``.
    """
    if step < 0 or inner_loops < 1 or iterations < 1:
        raise ValueError(
            f"need step >= 0, inner_loops >= 1, iterations >= 1; got {step}, {inner_loops}, {iterations}"
        )
    last_outer, last_inner = position(max(step - 1, 0), inner_loops)  # of the last completed step
    outer, inner = last_outer + 1, last_inner + 1 if step else 0
    o_width, i_width = len(str(iterations)), len(str(inner_loops))
    return f"outer {outer:>{o_width}}/{iterations} · inner {inner:>{i_width}}/{inner_loops}"


class DistillProgressBar(RichProgressBar):
    """Rich progress bar over a distillation run's inner steps, described by :func:`progress_text`.

    The bar's total is the run's total inner steps (``trainer.max_steps``; ``iterations * inner_loops``
    if that is unset), its position ``trainer.global_step``, so a resumed run starts where it stopped.

    Args:
        inner_loops: inner steps per outer iteration (``distill.inner_loops``).
        iterations: outer iterations of the run (``iterations``).
        **kwargs: passed to :class:`~pytorch_lightning.callbacks.RichProgressBar` (``refresh_rate``,
            ``leave``, ``theme``, ``console_kwargs``).
    """

    def __init__(self, inner_loops: int, iterations: int, **kwargs: Any) -> None:
        progress_text(0, inner_loops, iterations)  # validates the arguments
        super().__init__(**kwargs)
        self.inner_loops, self.iterations = inner_loops, iterations

    def describe(self, step: int) -> str:
        """:func:`progress_text` for this run after ``step`` completed inner steps."""
        return progress_text(step, self.inner_loops, self.iterations)

    @property
    def total_train_batches(self) -> int | float:
        """The whole run's inner steps, not the steps left (Lightning's count with ``max_epochs=-1``)."""
        max_steps = self.trainer.max_steps
        return max_steps if max_steps is not None and max_steps > 0 else self.iterations * self.inner_loops

    def _get_train_description(self, current_epoch: int) -> str:
        """The outer/inner position replaces ``Epoch {current_epoch}/{max_epochs - 1}``."""
        return self.describe(self.trainer.global_step)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning's bar starts at 0: move it to ``global_step``."""
        super().on_train_epoch_start(trainer, pl_module)
        self._show_train_bar(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Show the bar before the first step of a resumed run too.

        A run resumed from a mid-epoch checkpoint (every distillation checkpoint is one: the run is a
        single epoch) gets no ``on_train_epoch_start``; Lightning's bar would appear only after that step.
        """
        if self.train_progress_bar_id is None:
            self._show_train_bar(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Describe the new position; Lightning's update then moves the bar to ``global_step``.

        Lightning positions the bar at ``batch_idx + 1``; the parent gets ``global_step - 1`` in place of
        ``batch_idx`` so the position counts what the total counts (optimiser steps, as ``max_steps``).
        """
        if self.is_enabled and self.progress is not None and self.train_progress_bar_id is not None:
            description = self.describe(trainer.global_step)
            if self.theme.description:
                description = f"[{self.theme.description}]{description}"
            self.progress.update(self.train_progress_bar_id, description=description)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)

    def _show_train_bar(self, trainer: pl.Trainer) -> None:
        """Create the train bar if missing and put it at ``global_step`` (non-zero when resuming)."""
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)
        self.refresh()
