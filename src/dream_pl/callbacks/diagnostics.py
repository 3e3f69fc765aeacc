"""DiagnosticsCallback: the paper's analysis signals, logged while distilling (off unless enabled).

Every ``every_n_steps`` steps, for up to ``max_classes`` classes, it compares the sampler's matching
batch with a random batch of the same size: the MMD of each to the whole class in the matching network's
feature space (Fig. 2c), the L1 distance of each batch's conv-weight gradient to the class's, and the
per-sample gradient norms (Fig. 1a, Fig. 3).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


class DiagnosticsCallback(pl.Callback):
    """Logs ``distill/diag/{mmd,graddist,gradnorm}_{selected,random}`` and ``graddist_ratio``.

    Gradient-norm histograms go to TensorBoard and W&B where they are the logger.

    Args:
        every_n_steps: steps between diagnostics (align with the clustering interval to see each event).
        max_classes: classes analysed per event (the first ones).
        reference: images of the class (a seeded random subset) standing for the whole class in the MMD.
    """

    def __init__(self, every_n_steps: int, max_classes: int = 10, reference: int = 1000) -> None:
        self.every_n_steps, self.max_classes, self.reference = every_n_steps, max_classes, reference

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Run after the clustering callback (callbacks run in order), so it sees the new selection."""
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        stats = pl_module.selection_diagnostics(step, self.max_classes, self.reference)
        if stats:  # a process of a sharded run may hold none of the analysed classes
            self._log(trainer, pl_module, stats)

    def _log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stats: dict[str, torch.Tensor]
    ) -> None:
        names = {"gn_selected": "gradnorm_selected", "gn_random": "gradnorm_random"}
        for key, values in stats.items():
            pl_module.log(f"distill/diag/{names.get(key, key)}", float(values.mean()), on_step=True)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_histogram"):  # TensorBoard
                for key in ("gn_selected", "gn_random"):
                    experiment.add_histogram(f"distill/diag/{names[key]}", stats[key], trainer.global_step)
            elif type(logger).__name__ == "WandbLogger":
                import wandb

                logger.experiment.log(
                    {f"distill/diag/{names[k]}_hist": wandb.Histogram(stats[k].cpu().numpy()) for k in names},
                    step=trainer.global_step,
                )
