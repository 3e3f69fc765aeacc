"""Train R networks of one architecture at once on a tiny set: stacked parameters under ``torch.func.vmap``.

A synthetic set has tens to hundreds of images, so a single network leaves the device idle. Stacking the
repeats' parameters on a leading dimension turns R small steps into one batched step; the summed loss
gives each network exactly the gradient it would get alone, and SGD is element-wise, so the result is R
independent trainings. Networks with batch norm (running statistics updated in place) cannot run under
``vmap`` and are trained as a list instead, still in one Lightning loop; so are all networks on a CPU,
where vmap's grouped convolutions are slower than a loop (see ``protocol.use_stacking``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torchmetrics.classification import MulticlassAccuracy

from dream_pl.augment import DiffAugment, cutmix, cutmix_loss
from dream_pl.seeding import derive, generator

if TYPE_CHECKING:
    from dream_pl.schemas import EvalProtocol


def supports_stacking(net: nn.Module) -> bool:
    """True when ``net`` has no batch norm (whose in-place running statistics break ``vmap``)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def seeded_nets(factory: Callable[[], nn.Module], seed: int, repeats: int) -> list[nn.Module]:
    """Network r initialised from the stream (seed, "repeat", r), without touching the global RNG stream."""
    nets = []
    for r in range(repeats):
        with torch.random.fork_rng(devices=[]):  # built on the CPU: only the CPU generator is drawn from
            torch.random.default_generator.manual_seed(derive(seed, "repeat", r))
            nets.append(factory())
    return nets


class StackedClassifier(pl.LightningModule):
    """R = ``protocol.repeats`` classifiers trained on one small set, each with its own batches and draws.

    Args:
        factory: builds one network.
        images: [N, C, H, W] training images in pixel space.
        labels: [N] labels.
        protocol: epochs, SGD schedule, batch size, DSA and CutMix.
        seed: the evaluation's seed (initialisations, batch order and draws are derived from it).
        mean, std: normalisation of the dataset.
        num_classes: K.
        stacked: use ``vmap`` over stacked parameters (default: when the architecture allows it).
    """

    def __init__(
        self,
        factory: Callable[[], nn.Module],
        images: Tensor,
        labels: Tensor,
        *,
        protocol: EvalProtocol,
        seed: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_classes: int,
        stacked: bool | None = None,
    ) -> None:
        super().__init__()
        nets = seeded_nets(factory, seed, protocol.repeats)
        self.repeats, self.seed, self.protocol = protocol.repeats, seed, protocol
        self.stacked = supports_stacking(nets[0]) if stacked is None else stacked
        if self.stacked:
            params, buffers = stack_module_state(nets)
            self.params = nn.ParameterDict({k.replace(".", "/"): nn.Parameter(v) for k, v in params.items()})
            for k, v in buffers.items():
                self.register_buffer("stacked_" + k.replace(".", "_"), v)
            self._buffer_names = list(buffers)
            self.base = [copy.deepcopy(nets[0]).to("meta")]  # a list: not registered as a submodule
        else:
            self.nets = nn.ModuleList(nets)
        self.register_buffer("images", images.float())
        self.register_buffer("labels", labels.long())
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.aug = DiffAugment(protocol.dsa)
        self.test_acc = nn.ModuleList(
            # an evaluation is one process's own, also inside a DDP run: no cross-process sync on compute
            MulticlassAccuracy(num_classes, average="micro", sync_on_compute=False)
            for _ in range(self.repeats)
        )

    def logits(self, x: Tensor) -> Tensor:
        """x: [R, B, C, H, W] normalised -> [R, B, K], network r on batch r."""
        if not self.stacked:
            return torch.stack([net(xr) for net, xr in zip(self.nets, x, strict=True)])
        params = {k.replace("/", "."): v for k, v in self.params.items()}
        buffers = {k: getattr(self, "stacked_" + k.replace(".", "_")) for k in self._buffer_names}

        def one(p: dict[str, Tensor], b: dict[str, Tensor], xr: Tensor) -> Tensor:
            return functional_call(self.base[0], (p, b), (xr,))

        return vmap(one)(params, buffers, x)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """Batches of indices [R, b]: every repeat reshuffles the set independently each epoch."""
        return torch.utils.data.DataLoader(
            _RepeatBatches(len(self.labels), self.repeats, self.protocol.batch_size, self.seed),
            batch_size=None,
        )

    def configure_optimizers(self) -> dict:
        """SGD with the multi-step schedule (per epoch)."""
        p = self.protocol
        opt = torch.optim.SGD(self.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(p.milestones()), p.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def training_step(self, idx: Tensor, batch_idx: int) -> Tensor:
        """Summed CE (CutMix-weighted where drawn) of the R networks on their own batches."""
        b = idx.shape[1]
        x = (self.images[idx] - self.mean) / self.std  # [R, b, C, H, W]
        y = self.labels[idx]
        g = generator(self.seed, "eval_step", self.global_step, "device", device=self.device)
        g_cpu = generator(self.seed, "eval_step", self.global_step, "host")  # CutMix draws: no device sync
        x = self.aug(x.flatten(0, 1), shared=False, generator=g, choice_generator=g_cpu).view_as(x)
        cutmix_p = self.protocol.cutmix_p
        if cutmix_p <= 0:
            return F.cross_entropy(self.logits(x).flatten(0, 1), y.flatten(), reduction="sum") / b
        mixed, targets = [], []
        for xr, yr in zip(x, y, strict=True):
            if float(torch.rand((), generator=g_cpu)) < cutmix_p:
                xr, y_a, y_b, lam = cutmix(xr, yr, generator=g_cpu)
                targets.append((y_a, y_b, lam))
            else:
                targets.append((yr, yr, 1.0))
            mixed.append(xr)
        logits = self.logits(torch.stack(mixed))
        return sum(cutmix_loss(lr, ya, yb, lam) for lr, (ya, yb, lam) in zip(logits, targets, strict=True))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Top-1 of every network on a real test batch."""
        x, y = batch
        x = (x.to(self.mean.dtype) / 255.0 - self.mean) / self.std
        logits = self.logits(x.unsqueeze(0).expand(self.repeats, *x.shape))
        for metric, lr in zip(self.test_acc, logits, strict=True):
            metric.update(lr, y)

    def accuracies(self) -> list[float]:
        """Test accuracy of each network after :meth:`test_step` ran over the test set."""
        return [float(m.compute()) for m in self.test_acc]


class _RepeatBatches(torch.utils.data.IterableDataset):
    """One epoch of index batches [R, b]; each repeat has its own permutation, seeded per epoch."""

    def __init__(self, n: int, repeats: int, batch_size: int, seed: int) -> None:
        self.n, self.repeats, self.batch_size, self.seed, self.epoch = (
            n,
            repeats,
            batch_size,
            seed,
            0,
        )

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        g = generator(self.seed, "eval_epoch", self.epoch)
        self.epoch += 1
        perms = torch.stack([torch.randperm(self.n, generator=g) for _ in range(self.repeats)])
        yield from perms.split(self.batch_size, dim=1)
