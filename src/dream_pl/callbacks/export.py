"""SyntheticExport: write ``synthetic.pt`` and a PNG grid periodically and at the end of a run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from dream_pl.synthetic import save_grid, save_synthetic


class SyntheticExport(pl.Callback):
    """Exports the decoded synthetic set every ``every_n_steps`` steps and when training ends.

    Args:
        dirpath: run directory; writes ``synthetic.pt`` and ``synthetic.png`` there (atomically).
        every_n_steps: steps between exports (0: only at the end).
        config: resolved run config stored inside the file.
        on_export: called with the exported file's path (e.g. to log the grid).
    """

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int,
        config: dict[str, Any] | None = None,
        on_export: Callable[[Path], None] | None = None,
    ) -> None:
        self.dirpath, self.every_n_steps, self.config = Path(dirpath), every_n_steps, config or {}
        self.on_export = on_export

    def export(self, pl_module: pl.LightningModule, name: str = "synthetic") -> Path:
        """Write the current synthetic set as ``<name>.pt`` and ``<name>.png``; returns the ``.pt`` path."""
        data = pl_module.export(self.config)
        path = self.dirpath / f"{name}.pt"
        save_synthetic(path, data)
        save_grid(self.dirpath / f"{name}.png", data.images, data.labels)
        if self.on_export is not None:
            self.on_export(path)
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
