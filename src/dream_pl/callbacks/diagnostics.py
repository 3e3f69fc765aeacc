"""DiagnosticsCallback: the paper's analysis signals, logged while distilling (off unless enabled).

Every ``every_n_steps`` steps, for up to ``max_classes`` classes, it compares the sampler's matching
batch with a random batch of the same size: the MMD of each to the whole class in the matching network's
feature space (Fig. 2c) and the per-sample gradient norms (Fig. 1a, Fig. 3).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from dream_pl.diagnostics import median_bandwidth, mmd2_rbf, per_sample_grad_norms
from dream_pl.features import embed_class


class DiagnosticsCallback(pl.Callback):
    """Logs ``distill/diag/{mmd,gradnorm}_{selected,random}`` (and gradient-norm histograms where supported).

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
        real, net, sampler = pl_module.real, pl_module.net, pl_module.sampler
        g = torch.Generator().manual_seed(pl_module.cfg.seed * 7 + step)
        stats: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("mmd_selected", "mmd_random", "gn_selected", "gn_random")
        }
        was_training = net.training
        net.eval()
        for c in range(min(self.max_classes, real.num_classes)):
            selected = sampler.indices(real, c, g).to(real.images.device)
            random = real.sample_class(c, len(selected), g).to(real.images.device)
            ref = real.sample_class(c, min(self.reference, real.class_sizes[c]), g).to(real.images.device)
            feats = embed_class(net, real, c, indices=torch.cat([ref, selected, random]))
            f_ref, f_sel, f_rnd = feats.split([len(ref), len(selected), len(random)])
            sigma = median_bandwidth(f_ref)
            stats["mmd_selected"].append(mmd2_rbf(f_sel, f_ref, sigma))
            stats["mmd_random"].append(mmd2_rbf(f_rnd, f_ref, sigma))
            y = torch.full((len(selected),), c, device=real.images.device)
            stats["gn_selected"].append(per_sample_grad_norms(net, real.class_images(c, selected), y))
            stats["gn_random"].append(per_sample_grad_norms(net, real.class_images(c, random), y))
        net.train(was_training)
        self._log(
            trainer,
            pl_module,
            {k: torch.stack(v) if k.startswith("mmd") else torch.cat(v) for k, v in stats.items()},
        )

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
