"""ClusteringCallback: refresh the sampler's selection every ``I_int`` steps (DREAM's clustering events)."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl


class ClusteringCallback(pl.Callback):
    """Calls ``sampler.refresh`` on the current matching network every ``interval`` inner steps.

    It only decides *when*; the sampler decides *what*. A run resumed between two events reuses the
    selection restored from the checkpoint, so it matches against exactly what an uninterrupted run did.
    """

    def __init__(self, interval: int) -> None:
        if interval < 1:
            raise ValueError(f"clustering interval={interval} must be >= 1")
        self.interval = interval
        self.last_refresh: int | None = None
        self.events = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Refresh on every multiple of the interval (and whenever no selection exists yet)."""
        step = trainer.global_step
        sampler = pl_module.sampler
        if step % self.interval and sampler.ready():
            return
        t0 = time.perf_counter()
        stats = sampler.refresh(pl_module.net, pl_module.real, seed=pl_module.cfg.seed * 1_000_003 + step)
        self.last_refresh, self.events = step, self.events + 1
        pl_module.log("distill/time/cluster_s", time.perf_counter() - t0, on_step=True)
        for key, value in stats.items():
            pl_module.log(f"distill/cluster/{key}", value, on_step=True)

    def state_dict(self) -> dict[str, Any]:
        """Step of the last clustering event and the event count."""
        return {"last_refresh": self.last_refresh, "events": self.events}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.last_refresh, self.events = state_dict["last_refresh"], state_dict["events"]
