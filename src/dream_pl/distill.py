"""DistillModule: the Lightning glue around :class:`dream_pl.engine.Engine`.

One Lightning step is one engine step (one inner iteration) at the Trainer's ``global_step``. The Trainer
brings the processes, devices, step counter, checkpoints and loggers; the algorithm is the engine's.
"""

from __future__ import annotations

import logging
import resource
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from dream_pl.checkpoints import CONFIG_KEY, ENGINE_KEY, gather_image_rows, keep_image_rows
from dream_pl.engine import Engine, eager
from dream_pl.graphs import GraphRunner
from dream_pl.sharding import Shard
from dream_pl.synthetic import SyntheticData

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, max RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class DistillModule(pl.LightningModule):
    """Runs the engine under a Trainer: its network and images are the module's state, its logs are logged.

    The engine is built once this process's classes are known (:meth:`setup` in a Trainer, :meth:`prepare`
    outside one), before a checkpoint is restored into it.
    """

    def __init__(
        self, parts: dict[str, Any], *, dataset: str = "", run_config: dict[str, Any] | None = None
    ) -> None:
        """Hold the engine's parts until :meth:`build`.

        ``parts``: the :class:`Engine`'s keyword arguments (``workflow.engine_parts``) but its collectives and
        runner, which depend on the processes and the device.
        """
        super().__init__()
        self.automatic_optimization = False
        self.parts = dict(parts)
        self.cfg, self.dataset = parts["cfg"], dataset
        self.run_config = run_config or {}  # stored in checkpoints and exports: what resume checks against
        self.engine: Engine | None = None
        self.register_buffer("initialized", torch.tensor(False))

    def build(self, device: torch.device) -> Engine:
        """The engine of this process's classes, its network and images registered as the module's state."""
        if self.engine is None:
            shard = Shard.current(self.parts["real"].num_classes)
            # collectives stay outside graphs: a sharded run replays nothing
            graphs = self.cfg.cuda_graphs and device.type == "cuda" and not shard.sharded
            self.engine = Engine(**self.parts, collectives=shard, run=GraphRunner() if graphs else eager)
            self.net, self.synthetic = self.engine.net, self.engine.synthetic
            self.parts = {}  # the engine holds them (a sharded one keeps only its classes' real images)
        return self.engine

    def setup(self, stage: str) -> None:
        """Build the engine once the processes' group exists, before Lightning restores a checkpoint."""
        del stage
        self.build(self.trainer.strategy.root_device)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The engine's image optimiser (Lightning wraps it to count steps and checkpoint its state)."""
        return self.engine.image_opt

    def prepare(self) -> None:
        """Everything on the module's device; the images initialised unless a checkpoint restored them."""
        engine = self.build(self.device)
        self.to(device=self.device, dtype=self.dtype)
        engine.prepare()
        if not bool(self.initialized):
            engine.initialize()
            self.initialized.fill_(True)

    def on_fit_start(self) -> None:
        """:meth:`prepare` on the Trainer's device."""
        self.prepare()

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """A stream of placeholders: the data lives on the device in the engine's real set."""
        return torch.utils.data.DataLoader(_Steps(), batch_size=None)

    def training_step(self, batch: Tensor, batch_idx: int) -> dict[str, Any]:
        """One engine step at Lightning's step counter, logged under ``distill/`` (vectors as their means)."""
        del batch, batch_idx
        out = self.engine.step(self.global_step, apply=self.optimizers().step)
        self.log_dict(
            {f"distill/{k}": v.mean() if isinstance(v, Tensor) else v for k, v in out.items()}, on_step=True
        )
        self.log("loss", out["loss"], prog_bar=True, logger=False)
        return out

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Record the run's peak memory (CUDA allocator peak or CPU max RSS)."""
        self.log("distill/peak_mem_mb", peak_memory_mb(self.device), on_step=True)

    def on_train_end(self) -> None:
        """Say what this process held at its peak (per rank in a sharded run: its share of the classes)."""
        kind = "CUDA allocator peak" if self.device.type == "cuda" else "max RSS"
        log.info(
            "rank %d peak memory: %.0f MB (%s)", self.engine.shard.rank, peak_memory_mb(self.device), kind
        )

    def export(self, dst: int | None = None) -> SyntheticData | None:
        """The whole synthetic set, decoded, in pixel space, with what is needed to evaluate it.

        Classes sharded, every process calls this (a collective): the set is gathered on every process
        (``dst=None``) or on rank ``dst`` alone (the others get ``None``).
        """
        gathered = self.engine.gathered(dst)
        if gathered is None:
            return None
        stored, images, labels = gathered
        real = self.engine.real
        return SyntheticData(
            images=images.cpu(),
            labels=labels.cpu(),
            factor=self.cfg.factor,
            dataset=self.dataset,
            mean=tuple(real.mean.flatten().tolist()),
            std=tuple(real.std.flatten().tolist()),
            stored=stored.cpu(),
            config=self.run_config,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add what Lightning does not know: the engine's state and the run's config; every class's images."""
        gather_image_rows(checkpoint, self.engine.shard, self.cfg.ipc, self.engine.real.num_classes)
        checkpoint[CONFIG_KEY] = self.run_config
        checkpoint[ENGINE_KEY] = self.engine.state_dict()
        checkpoint["torch_rng"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the engine's state; keep this process's classes' rows of the images and their momentum.

        Runs before Lightning loads the state dict and the image optimiser, whatever number of processes
        wrote the checkpoint.
        """
        keep_image_rows(checkpoint, self.engine.shard, self.cfg.ipc)
        self.engine.load_state_dict(checkpoint[ENGINE_KEY])
        torch.set_rng_state(checkpoint["torch_rng"])


class _Steps(torch.utils.data.IterableDataset):
    """An endless stream of placeholders; Lightning's ``max_steps`` ends the run."""

    def __iter__(self):  # noqa: ANN204
        while True:
            yield torch.zeros(())
