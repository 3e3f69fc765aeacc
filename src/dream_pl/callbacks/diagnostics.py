"""DiagnosticsHistograms: the per-sample gradient norms of a diagnostics step as histograms (Fig. 1a, Fig. 3).

The engine computes the selection diagnostics every ``diagnostics_every`` inner steps (right after a
clustering event when the two align) and the module logs their means; this callback sends the
per-sample gradient norms of the selected and the random batch to TensorBoard or W&B as histograms.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

HISTOGRAMS = ("diag/gradnorm_selected", "diag/gradnorm_random")


class DiagnosticsHistograms(pl.Callback):
    """Logs ``distill/diag/gradnorm_{selected,random}`` histograms after a step that computed them."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Histograms of the step's per-sample gradient norms, where the logger draws them."""
        values = {key: outputs[key] for key in HISTOGRAMS if isinstance(outputs, dict) and key in outputs}
        if not values:
            return
        step = trainer.global_step - 1  # the step that computed them, as its scalars are logged
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_histogram"):  # TensorBoard
                for key, value in values.items():
                    experiment.add_histogram(f"distill/{key}", value, step)
            elif type(logger).__name__ == "WandbLogger":
                import wandb

                histograms = {
                    f"distill/{k}_hist": wandb.Histogram(v.cpu().numpy()) for k, v in values.items()
                }
                logger.log_metrics(histograms, step=step)
