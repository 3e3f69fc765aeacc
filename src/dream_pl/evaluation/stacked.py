"""Train R networks of one architecture at once on a tiny set: stacked parameters under ``torch.func.vmap``.

A synthetic set has tens to hundreds of images, so a single network leaves the device idle. Stacking the
repeats' parameters on a leading dimension turns R small steps into one batched step; the summed loss
gives each network exactly the gradient it would get alone, and SGD is element-wise, so the result is R
independent trainings. Networks with batch norm (running statistics updated in place) cannot run under
``vmap`` and are trained as a list instead, still in one Lightning loop; so are all networks on a CPU,
where vmap's grouped convolutions are slower than a loop (see ``protocol.use_stacking``).

On a GPU each batch step of a tiny set pays Lightning's per-step overhead and hundreds of kernel launches
on top of its arithmetic. The static formulation (``dream_pl.graphs.static_formulation``) therefore makes
one Lightning step one whole epoch and each batch step a pure function of an index tensor and the state
(device-side augmentation picks, ``torch.autograd.grad``, ``dream_pl.graphs.sgd_step_``), which on CUDA is
captured once per batch shape and replayed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torchmetrics.classification import MulticlassAccuracy

from dream_pl.augment import DiffAugment, cutmix, cutmix_loss, cutmix_static
from dream_pl.graphs import GraphedStep, sgd_step_, static_formulation, use_graphs
from dream_pl.models import has_batch_norm
from dream_pl.seeding import derive, generator

if TYPE_CHECKING:
    from dream_pl.schemas import EvalProtocol


def seeded_nets(factory: Callable[[], nn.Module], seed: int, repeats: int | Sequence[int]) -> list[nn.Module]:
    """Network r (of ``range(repeats)``, or the given repeat numbers) from the stream (seed, "repeat", r).

    The global RNG stream is left untouched.
    """
    nets = []
    for r in range(repeats) if isinstance(repeats, int) else repeats:
        with torch.random.fork_rng(devices=[]):  # built on the CPU: only the CPU generator is drawn from
            torch.random.default_generator.manual_seed(derive(seed, "repeat", r))
            nets.append(factory())
    return nets


def epoch_lr(protocol: EvalProtocol, epoch: int) -> float:
    """The lr of 0-based ``epoch``: MultiStepLR stepped once per epoch, for steps that own no optimizer."""
    return protocol.lr * protocol.lr_gamma ** sum(m <= epoch for m in protocol.milestones())


class StackedClassifier(pl.LightningModule):
    """R = ``protocol.repeats`` classifiers trained on one small set, each with its own batches and draws.

    Args:
        factory: builds one network.
        images: [N, C, H, W] training images in pixel space: float, or uint8 (0..255; divided per batch).
        labels: [N] labels.
        protocol: epochs, SGD schedule, batch size, DSA and CutMix.
        seed: the evaluation's seed (initialisations, batch order and draws are derived from it).
        mean, std: normalisation of the dataset.
        num_classes: K.
        stacked: use ``vmap`` over stacked parameters (default: when the architecture allows it).
        repeat_ids: which repeats of the protocol these are (default all): repeat r's initialisation, batch
            order and draws come from streams of its own, so it trains alike in any stack (repeats dealt out
            over processes give the one-process accuracies).
        device: the device the Trainer will train on; with ``protocol.compile`` it picks the formulation
            (``dream_pl.graphs.static_formulation``), which must be fixed before the Trainer starts.
        capture: replay the static formulation's batch step from CUDA graphs (default:
            ``dream_pl.graphs.use_graphs``); ``False`` runs it eagerly, the reference a captured run equals.
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
        device: torch.device | str = "cpu",
        capture: bool | None = None,
        repeat_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        device = torch.device(device)
        self.static = static_formulation(protocol.compile, device)
        self.capture = self.static and (use_graphs(protocol.compile, device) if capture is None else capture)
        self.automatic_optimization = not self.static
        self.ids = list(range(protocol.repeats) if repeat_ids is None else repeat_ids)
        nets = seeded_nets(factory, seed, self.ids)
        self.repeats, self.seed, self.protocol = len(self.ids), seed, protocol
        self.stacked = not has_batch_norm(nets[0]) if stacked is None else stacked  # BN breaks vmap
        if self.stacked:
            params, buffers = stack_module_state(nets)
            self.params = nn.ParameterDict({k.replace(".", "/"): nn.Parameter(v) for k, v in params.items()})
            for k, v in buffers.items():
                self.register_buffer("stacked_" + k.replace(".", "_"), v)
            self._buffer_names = list(buffers)
            self.base = [copy.deepcopy(nets[0]).to("meta")]  # a list: not registered as a submodule
        else:
            self.nets = nn.ModuleList(nets)
        # 8-bit images (a whole training set) stay 8-bit and become pixels a batch at a time: 60,000 MNIST
        # images are then 47 MB on the device instead of 188 MB, and the batches are the same floats
        self.register_buffer("images", images if images.dtype == torch.uint8 else images.float())
        self.register_buffer("labels", labels.long())
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.aug = DiffAugment(protocol.dsa)
        self.test_acc = nn.ModuleList(
            # an evaluation is one process's own, also inside a DDP run: no cross-process sync on compute
            MulticlassAccuracy(num_classes, average="micro", sync_on_compute=False)
            for _ in range(self.repeats)
        )
        # static formulation: the state its batch step reads and updates in place, made on the device at
        # on_train_start; the lr is a tensor so that a captured step follows the schedule
        self.register_buffer("lr", torch.tensor(float(protocol.lr)), persistent=False)
        self._params: list[Tensor] = []
        self._momentum: list[Tensor] = []
        self._trained_buffers: list[Tensor] = []
        self._gens: list[torch.Generator] = []
        self._graphs: dict[int, GraphedStep] = {}

    @property
    def formulation(self) -> str:
        """How training steps run: "graphs" (captured), "eager-static" (the same, uncaptured) or "off"."""
        return "graphs" if self.capture else "eager-static" if self.static else "off"

    def pixels(self, idx: Tensor) -> Tensor:
        """The training images at ``idx`` as float pixels (8-bit images are converted here, per batch)."""
        x = self.images[idx]
        return x.to(self.mean.dtype) / 255.0 if x.dtype == torch.uint8 else x

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
        """Batches of indices [R, b]: every repeat reshuffles the set independently each epoch.

        The static formulation takes the epoch's [R, N] permutations at once (its step is an epoch), from
        pinned memory on a GPU: the copy then never waits for the device, so the host can queue epochs ahead.
        """
        return torch.utils.data.DataLoader(
            _RepeatBatches(
                len(self.labels), self.ids, self.protocol.batch_size, self.seed, whole_epochs=self.static
            ),
            batch_size=None,
            pin_memory=self.static and self.device.type == "cuda",
        )

    def configure_optimizers(self) -> dict | list:
        """SGD with the multi-step schedule (per epoch).

        No optimizer for the static formulation: its batch step applies the same update (``sgd_step_`` at
        :func:`epoch_lr`) to tensors that a captured graph can own.
        """
        if self.static:
            return []
        p = self.protocol
        opt = torch.optim.SGD(self.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(p.milestones()), p.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def on_train_start(self) -> None:
        """Static formulation: allocate, on the training device, the state its batch step updates in place."""
        if not self.static:
            return
        if self.capture and self.device.type != "cuda":
            raise RuntimeError(f"CUDA-graph capture needs a CUDA device, not {self.device}")
        self._params = list(self.parameters())
        self._momentum = [torch.zeros_like(p) for p in self._params]  # torch SGD's first step, exactly
        self._trained_buffers = [] if self.stacked else list(self.nets.buffers())  # batch-norm statistics
        self._gens = [torch.Generator(device=self.device) for _ in self.ids]

    def on_train_end(self) -> None:
        """Release the captured graphs' memory before testing."""
        self._graphs.clear()

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor | None:
        """Static formulation: one epoch (``batch``: its [R, N] permutations); otherwise one batch [R, b]."""
        if self.static:
            self._train_epoch(batch)
            return None
        return self._host_step(batch)

    def _train_epoch(self, perms: Tensor) -> None:
        """The epoch's batch steps.

        Repeat r's batch k draws from the stream the host-decided step k draws r's device values from, so
        the two formulations draw alike wherever neither picks anything (one geometric op, no CutMix).
        """
        self.lr.fill_(epoch_lr(self.protocol, self.current_epoch))
        batches = perms.split(self.protocol.batch_size, dim=1)
        for i, idx in enumerate(batches):
            step = self.current_epoch * len(batches) + i
            graph = self._graph(idx.shape[1]) if self.capture else None
            if graph is not None:
                graph.inputs[0].copy_(idx)
            for g, r in zip(self._gens, self.ids, strict=True):
                g.manual_seed(derive(self.seed, "eval_step", step, "device", r))
            if graph is not None:
                graph()
            else:
                self._batch_step(idx)

    def _graph(self, b: int) -> GraphedStep:
        """The batch step for b images per repeat, captured on first use (an epoch's last batch is short)."""
        if b not in self._graphs:
            self._graphs[b] = GraphedStep(
                self._batch_step,
                [torch.zeros(self.repeats, b, dtype=torch.long, device=self.device)],
                state=[*self._params, *self._trained_buffers, *self._momentum],
                generators=self._gens,
            )
        return self._graphs[b]

    def _batch_step(self, idx: Tensor) -> Tensor:
        """One SGD step of the R networks on their batches idx [R, b]; returns the summed loss.

        A function of ``idx``, the state and the repeats' generators only: device-side op picks and CutMix
        decisions, no host read, no host-to-device copy, so the same code runs eagerly or captured.
        """
        p = self.protocol
        x = (self.pixels(idx) - self.mean) / self.std  # [R, b, C, H, W]
        y = self.labels[idx]
        gens = self._gens
        x = torch.stack(
            [self.aug(xr, shared=False, generator=g, static=True) for xr, g in zip(x, gens, strict=True)]
        )
        if p.cutmix_p > 0:
            mixed = [
                cutmix_static(xr, yr, p.cutmix_p, generator=g) for xr, yr, g in zip(x, y, gens, strict=True)
            ]
            loss = self._summed_loss(torch.stack([m[0] for m in mixed]), [m[1:] for m in mixed])
        else:
            loss = self._summed_ce(x, y)
        grads = torch.autograd.grad(loss, self._params)
        sgd_step_(
            self._params, grads, self._momentum, lr=self.lr, momentum=p.momentum, weight_decay=p.weight_decay
        )
        return loss.detach()

    def _summed_ce(self, x: Tensor, y: Tensor) -> Tensor:
        """Sum over repeats of network r's mean cross-entropy on x[r], y[r] ([R, b, ...], [R, b])."""
        return F.cross_entropy(self.logits(x).flatten(0, 1), y.flatten(), reduction="sum") / y.shape[1]

    def _summed_loss(self, x: Tensor, targets: list[tuple[Tensor, Tensor, float | Tensor]]) -> Tensor:
        """Sum over repeats of the CutMix loss of network r on x[r] with targets[r] = (y_a, y_b, lam)."""
        logits = self.logits(x)
        return sum(cutmix_loss(lr, ya, yb, lam) for lr, (ya, yb, lam) in zip(logits, targets, strict=True))

    def _host_step(self, idx: Tensor) -> Tensor:
        """Summed CE (CutMix-weighted where drawn) of the R networks on their own batches.

        Draws that pick a code path come from a CPU generator: no device sync, but nothing to capture.
        """
        step = self.global_step
        x = (self.pixels(idx) - self.mean) / self.std  # [R, b, C, H, W]
        y = self.labels[idx]
        gens = [generator(self.seed, "eval_step", step, "device", r, device=self.device) for r in self.ids]
        hosts = [generator(self.seed, "eval_step", step, "host", r) for r in self.ids]  # picks, no sync
        x = torch.stack(
            [
                self.aug(xr, shared=False, generator=g, choice_generator=h)
                for xr, g, h in zip(x, gens, hosts, strict=True)
            ]
        )
        cutmix_p = self.protocol.cutmix_p
        if cutmix_p <= 0:
            return self._summed_ce(x, y)
        mixed, targets = [], []
        for xr, yr, g_cpu in zip(x, y, hosts, strict=True):
            if float(torch.rand((), generator=g_cpu)) < cutmix_p:
                xr, y_a, y_b, lam = cutmix(xr, yr, generator=g_cpu)
                targets.append((y_a, y_b, lam))
            else:
                targets.append((yr, yr, 1.0))
            mixed.append(xr)
        return self._summed_loss(torch.stack(mixed), targets)

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
    """One epoch of index batches [R, b]; repeat r's permutation comes from its own stream, per epoch.

    ``whole_epochs``: yield the epoch's permutations [R, N] as one item (one host-to-device copy per epoch).
    """

    def __init__(
        self, n: int, repeats: Sequence[int], batch_size: int, seed: int, *, whole_epochs: bool = False
    ) -> None:
        self.n, self.repeats, self.batch_size, self.seed, self.epoch = n, list(repeats), batch_size, seed, 0
        self.whole_epochs = whole_epochs

    def __len__(self) -> int:
        return 1 if self.whole_epochs else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        perms = torch.stack(
            [
                torch.randperm(self.n, generator=generator(self.seed, "eval_epoch", epoch, r))
                for r in self.repeats
            ]
        )
        if self.whole_epochs:
            yield perms
        else:
            yield from perms.split(self.batch_size, dim=1)
