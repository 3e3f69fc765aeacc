"""PeriodicEvaluation: accuracy-vs-iteration curves while distilling (off unless ``eval_every`` > 0)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

from dream_pl.evaluation.progress import EvaluationBar
from dream_pl.evaluation.protocol import EvalResult
from dream_pl.evaluation.sets import DISTILLED
from dream_pl.schemas import EvalProtocol


class PeriodicEvaluation(pl.Callback):
    """Every ``every_n_steps`` steps (and before the first), evaluate the current synthetic set.

    Args:
        every_n_steps: steps between evaluations.
        evaluate: ``(images, labels, protocol) -> EvalResult`` on the real test set.
        protocol: usually a cheap one (fewer epochs and repeats than the final evaluation).
        name: architecture name, for the logged key ``eval/<name>/acc``.
        inner_loops: steps per outer iteration (the curve's x axis is the outer iteration).
    """

    def __init__(
        self,
        every_n_steps: int,
        evaluate: Callable[..., EvalResult],
        protocol: EvalProtocol,
        name: str,
        inner_loops: int,
    ) -> None:
        self.every_n_steps, self.evaluate, self.protocol, self.name = every_n_steps, evaluate, protocol, name
        self.inner_loops = inner_loops
        self.history: list[dict[str, float]] = []

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate now and log ``eval/<name>/acc`` (percent) against the outer iteration (on rank 0).

        Every process sends its classes' images (sharded classes); rank 0 alone evaluates, shown as a line
        under the distillation's bar.
        """
        data = pl_module.export(dst=0)
        if data is None:
            return
        bar = trainer.progress_bar_callback
        progress = bar.progress if isinstance(bar, RichProgressBar) and bar.is_enabled else None
        repeats = self.protocol.repeats
        with EvaluationBar(
            repeats * self.protocol.epochs, enabled=progress is not None, progress=progress
        ) as ticks:
            ticks.describe(DISTILLED, self.name, repeats)
            result = self.evaluate(data.images, data.labels, protocol=self.protocol, on_epoch=ticks.advance)
        outer = trainer.global_step / self.inner_loops
        row = {"step": trainer.global_step, "iteration": outer, "acc": result.mean, "std": result.std}
        self.history.append(row)
        for logger in trainer.loggers:
            logger.log_metrics(
                {
                    f"eval/{self.name}/acc": result.mean,
                    f"eval/{self.name}/acc_std": result.std,
                    "iteration": outer,
                },
                step=trainer.global_step,
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The initial set's accuracy: every curve is read against it."""
        if trainer.global_step == 0:
            self.run(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Evaluate on every multiple of ``every_n_steps`` completed steps."""
        if trainer.global_step % self.every_n_steps == 0:
            self.run(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """The curve so far (survives a resume)."""
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the curve."""
        self.history = list(state_dict["history"])
