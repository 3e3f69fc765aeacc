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

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torchmetrics.classification import MulticlassAccuracy

from dream_pl.augment import DiffAugment, cutmix, cutmix_loss


def supports_stacking(net: nn.Module) -> bool:
    """True when ``net`` has no batch norm (whose in-place running statistics break ``vmap``)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def seeded_nets(factory: Callable[[], nn.Module], seeds: list[int]) -> list[nn.Module]:
    """One freshly initialised network per seed, without touching the global RNG stream."""
    nets = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets.append(factory())
    return nets


class StackedClassifier(pl.LightningModule):
    """R classifiers trained on one small set; each draws its own batches and augmentations.

    Args:
        factory: builds one network.
        seeds: one initialisation seed per repeat (R = len(seeds)).
        images: [N, C, H, W] training images in pixel space.
        labels: [N] labels.
        mean, std: normalisation of the dataset.
        num_classes: K.
        epochs, batch_size, lr, momentum, weight_decay, milestones, gamma: the SGD protocol.
        dsa: per-sample DSA strategy; cutmix_p: CutMix probability per batch.
        stacked: use ``vmap`` over stacked parameters (default: when the architecture allows it).
    """

    def __init__(
        self,
        factory: Callable[[], nn.Module],
        seeds: list[int],
        images: Tensor,
        labels: Tensor,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_classes: int,
        epochs: int,
        batch_size: int = 64,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        milestones: tuple[int, ...] = (),
        gamma: float = 0.2,
        dsa: str = "",
        cutmix_p: float = 0.0,
        stacked: bool | None = None,
    ) -> None:
        super().__init__()
        nets = seeded_nets(factory, seeds)
        self.repeats, self.seed = len(seeds), seeds[0]
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
        self.epochs, self.batch_size = epochs, batch_size
        self.opt_args = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        self.milestones, self.gamma = list(milestones), gamma
        self.aug, self.cutmix_p = DiffAugment(dsa), cutmix_p
        self.test_acc = nn.ModuleList(MulticlassAccuracy(num_classes, average="micro") for _ in seeds)

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
            _RepeatBatches(len(self.labels), self.repeats, self.batch_size, self.seed),
            batch_size=None,
        )

    def configure_optimizers(self) -> dict:
        """SGD with the multi-step schedule (per epoch)."""
        opt = torch.optim.SGD(self.parameters(), **self.opt_args)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, self.milestones, self.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def training_step(self, idx: Tensor, batch_idx: int) -> Tensor:
        """Summed CE (CutMix-weighted where drawn) of the R networks on their own batches."""
        b = idx.shape[1]
        x = (self.images[idx] - self.mean) / self.std  # [R, b, C, H, W]
        y = self.labels[idx]
        step_seed = self.seed * 1_000_003 + self.global_step
        g = torch.Generator(device=self.device).manual_seed(step_seed)
        g_cpu = torch.Generator().manual_seed(step_seed)  # CutMix draws on the host: no device sync
        x = self.aug(x.flatten(0, 1), shared=False, generator=g).view_as(x)
        if self.cutmix_p <= 0:
            return F.cross_entropy(self.logits(x).flatten(0, 1), y.flatten(), reduction="sum") / b
        mixed, targets = [], []
        for xr, yr in zip(x, y, strict=True):
            if float(torch.rand((), generator=g_cpu)) < self.cutmix_p:
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
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        perms = torch.stack([torch.randperm(self.n, generator=g) for _ in range(self.repeats)])
        yield from perms.split(self.batch_size, dim=1)
