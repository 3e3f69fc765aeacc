"""ClusteringCallback: DREAM's clustering events, every ``I_int`` inner steps; the schedule's one owner."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


class ClusteringCallback(pl.Callback):
    """Calls ``pl_module.refresh_selection(step)`` every ``interval`` inner steps and logs what it returns.

    It decides only *when* (``sampler.interval`` in the config, checked once by ``config.validate``);
    the module decides *what*. Events follow the outer iteration, at ``inner % interval == 0`` (as the
    authors' ``ot % interval``), so the first matches of an outer iteration always use a selection made on
    that iteration's fresh network, never one from the discarded network, even when ``interval`` does not
    divide ``inner_loops``. The first step it sees always refreshes unless a checkpoint restored the
    callback's state: a resumed run then keeps the selection restored with the module, and matches
    against exactly what an uninterrupted run did.
    """

    def __init__(self, interval: int, inner_loops: int) -> None:
        self.interval, self.inner_loops = interval, inner_loops
        self.last_refresh: int | None = None
        self.events = 0

    def due(self, step: int) -> bool:
        """Whether a clustering event runs before step ``step``."""
        return (step % self.inner_loops) % self.interval == 0 or self.last_refresh is None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Refresh on every multiple of the interval, and before the first step of a fresh run."""
        step = trainer.global_step
        if not self.due(step):
            return
        stats = pl_module.refresh_selection(step)
        self.last_refresh, self.events = step, self.events + 1
        pl_module.log_dict({f"distill/{k}": v for k, v in stats.items()}, on_step=True)

    def state_dict(self) -> dict[str, Any]:
        """Step of the last clustering event and the event count."""
        return {"last_refresh": self.last_refresh, "events": self.events}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.last_refresh, self.events = state_dict["last_refresh"], state_dict["events"]
