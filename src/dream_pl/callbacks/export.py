"""SyntheticExport: write ``synthetic.pt`` and a PNG grid periodically and at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from dream_pl.synthetic import save_grid, save_synthetic


class SyntheticExport(pl.Callback):
    """Exports the decoded synthetic set every ``every_n_steps`` steps and when training ends.

    Args:
        dirpath: run directory; writes ``synthetic.pt`` and ``synthetic.png`` there (atomically).
        every_n_steps: steps between exports (0: only at the end).

    The grid also goes to the run's image-capable loggers (W&B, TensorBoard) as ``distill/synthetic``.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int) -> None:
        self.dirpath, self.every_n_steps = Path(dirpath), every_n_steps

    def export(self, pl_module: pl.LightningModule, name: str = "synthetic") -> Path:
        """Write the current synthetic set as ``<name>.pt`` and ``<name>.png``; returns the ``.pt`` path.

        Classes sharded, every process sends its classes' images to rank 0, which alone writes.
        """
        path = self.dirpath / f"{name}.pt"
        data = pl_module.export(dst=0)
        if data is None:
            return path
        save_synthetic(path, data)
        grid = self.dirpath / f"{name}.png"
        save_grid(grid, data.images, data.labels)
        log_grid(pl_module, grid, f"distill/{name}")
        return path

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Keep the initial set (``synthetic_init.pt``): every curve is read against it."""
        if trainer.global_step == 0:
            self.export(pl_module, "synthetic_init")

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Export on every multiple of ``every_n_steps`` completed steps."""
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.export(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Final export."""
        self.export(pl_module)


def log_grid(pl_module: pl.LightningModule, png: Path, key: str) -> None:
    """Send an image grid to the loggers that show images (W&B, TensorBoard); CSV ignores it."""
    step = pl_module.global_step
    for logger in pl_module.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(png)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            image = torch.from_numpy(plt.imread(png)[..., :3].copy()).permute(2, 0, 1)
            logger.experiment.add_image(key, image, step)
