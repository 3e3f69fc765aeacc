"""``trainer=ddp``: Lightning's DDP processes, the classes sharded over them (:mod:`dream_pl.sharding`)."""

from __future__ import annotations

from pytorch_lightning.strategies import DDPStrategy


class ClassShardedDDP(DDPStrategy):
    """Lightning's DDP processes and process group, without ``DistributedDataParallel``'s wrapper.

    The engine syncs exactly what it shares (:class:`dream_pl.sharding.Shard`); DDP's automatic gradient
    averaging would instead average the synthetic images' gradient (each class's comes from one process)
    and expects one backward per step, where a distillation step has one per class and network update.
    """

    def configure_ddp(self) -> None:
        """Keep the LightningModule unwrapped: no gradient hooks, no parameter broadcast by DDP."""
