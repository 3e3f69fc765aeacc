"""The distillation loop, written once: DREAM's outer and inner iterations, with no Lightning in it.

Each outer iteration draws a fresh matching network (DREAM+: trains it ``warmup_epochs`` on real data);
each of its ``inner_loops`` inner iterations

1. re-selects every class's real matching batch on the current network every ``interval`` inner steps
   (DREAM's clustering event; a random sampler has nothing to re-select),
2. matches every class's synthetic images against its real batch under one shared DSA draw,
3. steps the images (one joint step, or one after each class as the authors' code does),
4. trains the matching network, except after the outer iteration's last match (its network is discarded):
   on random real batches (IDC, with per-sample DSA and CutMix), on the synthetic set (DC, DSA), or not at
   all (DM); ``distill.net_data`` chooses the feed, so the methods share this one step.

Every random draw comes from a generator seeded by (seed, step, purpose, class) (:mod:`dream_pl.seeding`)
and is made on the device, and nothing in passes 2 and 4 reads a value back on the host: a resumed run
repeats an uninterrupted one, a class draws the same whichever process holds it, and both passes can be
replayed from CUDA graphs by the ``run`` wrapper given from outside (:class:`dream_pl.graphs.GraphRunner`).
The engine is given its parts (matcher, sampler, initialiser, real set, collectives, graph runner); it
knows nothing of Lightning, Hydra or the config files.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from dream_pl.augment import DiffAugment, cutmix_loss, cutmix_static
from dream_pl.data import RealSet
from dream_pl.data.realset import draw_indices
from dream_pl.diagnostics import per_class_diagnostics, stack_diagnostics
from dream_pl.errors import UserError
from dream_pl.graphs import sgd_step_
from dream_pl.models import has_batch_norm
from dream_pl.samplers import Sampler
from dream_pl.schemas import DistillConfig
from dream_pl.seeding import derive, generator
from dream_pl.sharding import Shard
from dream_pl.synthetic import SyntheticSet, decode, decode_classes

log = logging.getLogger(__name__)
Logs = dict[str, Tensor | float]
DIAGNOSTIC_NAMES = {"gn_selected": "gradnorm_selected", "gn_random": "gradnorm_random"}  # per-sample norms


class NonFiniteLossError(UserError, RuntimeError):
    """The matching loss became NaN or inf; the run stops and keeps its last good checkpoint."""


class Runner(Protocol):
    """Runs one of the engine's fixed-shape passes: eagerly, or replayed from a CUDA graph."""

    def __call__(
        self,
        name: str,
        fn: Callable[..., Any],
        inputs: list[Tensor],
        *,
        state: list[Tensor],
        reads: list[Tensor],
        generators: list[torch.Generator],
    ) -> Any:
        """``fn(*inputs)``; ``state``/``reads``: the tensors it changes in place / only reads."""


def eager(name: str, fn: Callable[..., Any], inputs: list[Tensor], **_: Any) -> Any:
    """The default :class:`Runner`: ``fn(*inputs)``, as it is."""
    del name
    return fn(*inputs)


def position(step: int, inner_loops: int) -> tuple[int, int]:
    """(outer iteration, inner iteration) of the 0-based inner ``step``: the one place this is computed."""
    return divmod(step, inner_loops)


def effective_lr_img(
    lr_img: float, ipc: int, size: int, size_base: int, *, rule: str = "idc", std: Tensor | None = None
) -> float:
    """The pixel-space image learning rate of ``lr_img`` under ``rule``.

    ``idc``: IDC's ``lr_img * (ipc / 10) * (size / size_base)^2``. ``normalized``: DC, DSA and DM store
    normalised images and step them at a constant ``lr_img``; the same step on pixels (``x = n * std +
    mean``) takes ``lr_img * std^2`` (the mean of the channels' ``std^2``, which differ by < 3% on CIFAR).

    >>> round(effective_lr_img(1e-4, 10, 28, 32), 8)
    7.656e-05
    >>> round(effective_lr_img(1.0, 10, 28, 28, rule="normalized", std=torch.tensor([0.5])), 4)
    0.25
    """
    if rule == "normalized":
        return lr_img * float((std**2).mean())
    return lr_img * (ipc / 10) * (size / size_base) ** 2


class Engine:
    """DREAM/IDC's bilevel loop over a synthetic set; :meth:`run` is the loop, :meth:`step` one iteration.

    Args:
        real: the real training set (moved to the images' device by :meth:`prepare`).
        net_factory: builds a fresh matching network (seeded by the engine).
        matcher: ``matcher(net, x_real, y_real, x_syn, y_syn) -> loss`` for one class.
        sampler: gives each class's real matching batch; one that ``selects`` is refreshed every
            ``interval`` inner steps.
        initializer: where the images start (see :mod:`dream_pl.initializers`).
        cfg: the loop's hyper-parameters.
        interval: inner steps between clustering events (I_int); ignored for a sampler that does not select.
        collectives: this process's classes and the few sums and broadcasts a sharded run needs
            (:class:`dream_pl.sharding.Shard`; one process: no-ops).
        run: replays the matching pass and the network update (:class:`Runner`; default: eagerly).
        diagnostics_every: inner steps between selection diagnostics (0: never).
    """

    def __init__(
        self,
        *,
        real: RealSet,
        net_factory: Callable[[], nn.Module],
        matcher: Callable[..., Tensor],
        sampler: Sampler,
        initializer: Callable[..., Tensor],
        cfg: DistillConfig,
        interval: int | None = None,
        collectives: Shard | None = None,
        run: Runner = eager,
        diagnostics_every: int = 0,
    ) -> None:
        self.real, self.net_factory, self.matcher, self.sampler = real, net_factory, matcher, sampler
        self.initializer, self.cfg, self.run = initializer, cfg, run
        self.interval = interval if sampler.selects else None
        self.diagnostics_every = diagnostics_every
        self.shard = collectives or Shard(0, 1, tuple(range(real.num_classes)))
        _, channels, self.size, _ = real.images.shape
        rows = len(self.shard.classes) * cfg.ipc
        images = torch.zeros(rows, channels, self.size, self.size)
        self.synthetic = SyntheticSet(images, real.num_classes, cfg.ipc, cfg.factor, self.shard.classes)
        lr = effective_lr_img(
            cfg.lr_img, cfg.ipc, self.size, cfg.lr_size_base, rule=cfg.lr_rule, std=real.std.float()
        )
        self.image_opt = torch.optim.SGD([self.synthetic.images], lr=lr, momentum=cfg.momentum_img)
        self.project = self.synthetic.clamp_ if cfg.clamp else lambda: None  # IDC clamps; DC, DSA, DM do not
        synthetic_images = real.num_classes * cfg.ipc * cfg.factor**2
        feeds = {  # what the network trains on between matches, and its updates per inner iteration:
            "real": (self._real_batch, lambda: math.ceil(cfg.n_data / cfg.batch_real)),  # n_data samples: IDC
            "synthetic": (  # net_epochs passes over the synthetic set, batches of <= batch_real: DC, DSA
                self._synthetic_batch,
                lambda: cfg.net_epochs * math.ceil(synthetic_images / cfg.batch_real),
            ),
            "none": (None, lambda: 0),  # DM
        }
        self.net_feed, updates = feeds[cfg.net_data]
        self.net_steps = updates()
        self.match_aug, self.net_aug = DiffAugment(cfg.match_dsa), DiffAugment(cfg.net_dsa)
        self.net = self._fresh_net(0)
        self.momentum = [torch.zeros_like(p) for p in self.net.parameters()]
        # batch norm's statistics over a share of the batch would differ from the whole batch's: replicated
        self.shard_net = self.shard.sharded and cfg.shard_net_update and not has_batch_norm(self.net)
        self._real_idx = torch.zeros(0, dtype=torch.long)
        if self.shard.sharded:
            whole = images[:1].nbytes * cfg.ipc * real.num_classes
            self._log_share("synthetic", len(self.shard.classes), images.nbytes, whole, digits=2)

    # ----------------------------------------------------------------- the loop
    def loop(self, iterations: int, start: int = 0) -> Iterator[Logs]:
        """The outer loop, from inner step ``start`` to the end of outer iteration ``iterations``."""
        first_outer, first_inner = position(start, self.cfg.inner_loops)
        for outer in range(first_outer, iterations):
            for inner in range(first_inner if outer == first_outer else 0, self.cfg.inner_loops):
                yield self.step(outer * self.cfg.inner_loops + inner)

    def step(self, step: int, apply: Callable[[], Any] | None = None) -> Logs:
        """One inner iteration at inner step ``step``; returns what to log (losses stay on the device).

        ``apply()`` takes the image optimiser's step once the gradients are in place (default: the
        optimiser's own ``step``; Lightning passes its wrapped optimiser's, which counts the step).
        """
        outer, inner = position(step, self.cfg.inner_loops)
        logs: Logs = {"outer": float(outer)}
        if inner == 0:  # a new outer iteration: a fresh network, the images back in the pixel range (IDC)
            self.draw_network(outer)
            logs["time/warmup_s"] = self.warm_up(outer)
            self.project()
        if self.interval is not None and (inner % self.interval == 0 or not self.sampler.ready):
            logs |= self.refresh_selection(step)
        if self.diagnostics_every and step % self.diagnostics_every == 0:
            logs |= {f"diag/{DIAGNOSTIC_NAMES.get(k, k)}": v for k, v in self.diagnostics(step).items()}
        t0 = time.perf_counter()
        per_class = self.match_and_step(step, apply or self.image_opt.step)
        t1 = time.perf_counter()
        last = inner == self.cfg.inner_loops - 1  # the network trained now would be discarded unused (DC)
        net_loss = self.train_network(step, 0 if last else self.net_steps)
        return logs | {
            "loss": per_class.mean(),
            **{f"loss_class/{c}": loss for c, loss in enumerate(per_class)},
            "net_loss": net_loss,
            "time/match_s": t1 - t0,
            "time/net_s": time.perf_counter() - t1,
        }

    def refresh_selection(self, step: int) -> Logs:
        """A clustering event: every held class's matching batch re-selected on the current network."""
        start = time.perf_counter()
        seed = derive(self.cfg.seed, "cluster", step)
        stats = self.sampler.refresh(self.net, self.real, seed=seed, classes=list(self.shard.classes))
        stats = self.shard.mean_over_classes(stats, len(self.shard.classes))
        if self.shard.sharded:  # every process keeps every class's selection: checkpoints need it
            self.sampler.adopt(
                self.real.num_classes, self.shard.merge(self.sampler.owned(self.shard.classes))
            )
            self.sampler.to(self.device)
        return {"time/cluster_s": time.perf_counter() - start} | {f"cluster/{k}": v for k, v in stats.items()}

    def match_and_step(self, step: int, apply: Callable[[], Any]) -> Tensor:
        """Match every held class and step the images; returns every class's loss ([K], over all processes).

        ``joint``: one image step with every class's gradient. ``per_class`` (the authors'): a step after
        each class, the last one through ``apply``; the image momentum then also moves the classes stepped
        before (their gradient is zero, their momentum is not).
        """
        owned, images = list(self.shard.classes), self.synthetic.images
        real_idx = self.draw_real_indices(step)
        groups = [owned] if self.cfg.image_step == "joint" else [[c] for c in owned]
        losses: list[Tensor] = []
        for i, classes in enumerate(groups):
            loss, grad = self._matched(real_idx, classes)
            losses.extend(loss.detach().clone().unbind())
            self._check_finite(owned[: len(losses)], losses, step)
            images.grad = grad.clone()
            if i < len(groups) - 1:
                self.image_opt.step()
        apply()  # a process holding no class steps too (the empty pass's zero gradient): state to gather
        images.grad = None
        return self._every_class(losses)

    def _matched(self, real_idx: Tensor, classes: list[int]) -> tuple[Tensor, Tensor]:
        """Losses and image gradient of ``classes``.

        Every held class at once goes through the runner (a CUDA graph on a GPU); one class of a per-class
        image step runs eagerly.
        """
        owned = list(self.shard.classes)
        if classes == owned:
            return self.run(
                "match",
                self.match_pass,
                [real_idx],
                state=list(self.net.buffers()),  # batch norm's running statistics move while matching
                reads=[self.synthetic.images, *self.net.parameters()],
                generators=[self._gens[c] for c in owned],
            )
        rows = [owned.index(c) for c in classes]
        return self.match_pass(real_idx[rows], classes)

    def draw_real_indices(self, step: int) -> Tensor:
        """Each held class's real batch, as indices into the real set's storage, in a fixed buffer.

        Drawn on the host's orders (a sampler may read its selection), from the class's device stream of
        this step, which the matching pass then continues for its DSA draws.
        """
        owned = list(self.shard.classes)
        for c in owned:
            self._gens[c].manual_seed(derive(self.cfg.seed, "step", step, "device", c))
        if not owned:
            return self._real_idx
        idx = torch.stack(
            [
                self.sampler.indices(self.real, c, self._gens[c]) + self.real.class_slice(c).start
                for c in owned
            ]
        )
        if self._real_idx.shape != idx.shape or self._real_idx.device != idx.device:
            self._real_idx = torch.empty_like(idx)
        self._real_idx.copy_(idx)
        return self._real_idx

    def match_pass(self, real_idx: Tensor, classes: list[int] | None = None) -> tuple[Tensor, Tensor]:
        """Matching losses [k] of ``classes`` (default: every held one) and d(their sum)/d(stored images).

        Reads only the index buffer, the images, the network and the classes' streams, and never the host:
        capturable as a whole.
        """
        images = self.synthetic.images
        grad, losses = torch.zeros_like(images), []
        for row, c in enumerate(self.shard.classes if classes is None else classes):
            g = self._gens[c]
            x_real = self.real.get(real_idx[row])
            x_syn = self.synthetic.class_decoded(c)
            if len(x_syn) > self.cfg.batch_syn_max:
                x_syn = x_syn[draw_indices(len(x_syn), self.cfg.batch_syn_max, g)]
            x = self.match_aug(
                torch.cat([x_real, self.real.normalize(x_syn)]), shared=True, generator=g, static=True
            )
            y = torch.full((len(x),), c, device=x.device)
            n = len(x_real)
            loss = self.matcher(self.net, x[:n], y[:n], x[n:], y[n:])
            grad += torch.autograd.grad(loss, images)[0]
            losses.append(loss.detach())
        return torch.stack(losses) if losses else images.new_zeros(0), grad

    def train_network(self, step: int, steps: int | None = None) -> Tensor:
        """Train the matching network ``steps`` updates (default: an inner iteration's) on its feed.

        Returns the mean loss (zero when it takes no step).
        """
        steps = self.net_steps if steps is None else steps
        self._net_gen.manual_seed(derive(self.cfg.seed, "step", step, "net_device"))
        return self._train(steps, "net", self.net_feed)

    def warm_up(self, outer: int) -> float:
        """DREAM+: the fresh network trains ``warmup_epochs`` on random real batches; returns seconds."""
        start = time.perf_counter()
        steps = math.ceil(self.cfg.warmup_epochs * len(self.real) / self.cfg.batch_real)
        self._net_gen.manual_seed(derive(self.cfg.seed, "warmup", outer, "net_device"))
        self._train(steps, "warmup", self._real_batch)
        return time.perf_counter() - start

    def _train(
        self, steps: int, name: str, feed: Callable[[torch.Generator], tuple[Tensor, Tensor]]
    ) -> Tensor:
        self.net.train()
        params = list(self.net.parameters())
        reads = [self.real.images, self.synthetic.images]
        total = torch.zeros((), device=self.device)
        for _ in range(steps):
            total += self.run(
                name,
                lambda: self._network_update(feed),
                [],
                state=[*params, *self.net.buffers(), *self.momentum],
                reads=reads,
                generators=[self._net_gen],
            )
            self.shard.broadcast_([p.data for p in params])  # rank 0's weights are the run's, for any k
        return (self.shard.sum_(total) if self.shard_net else total) / max(steps, 1)

    def _real_batch(self, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """A random real batch of the whole set (every class)."""
        x, y = self.real.sample(self.cfg.batch_real, g)
        if not self.real.complete:  # classes sharded: each process adds the rows of the classes it holds
            self.shard.sum_(x)
        return x, y

    def _synthetic_batch(self, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """A random batch of the decoded synthetic set, as constants (DC: a detached copy).

        Its labels were made once (:meth:`prepare`): nothing crosses from the host while a graph captures.
        """
        stored, y = self.synthetic.images.detach(), self._syn_labels
        x = torch.cat([decode(block, self.cfg.factor) for block in stored.split(self.cfg.ipc)])
        idx = draw_indices(len(x), min(self.cfg.batch_real, len(x)), g)
        return self.real.normalize(x[idx]), y[idx]

    def _network_update(self, feed: Callable[[torch.Generator], tuple[Tensor, Tensor]]) -> Tensor:
        """One network update: a batch from ``feed``, per-sample DSA, CutMix (decided on the device), SGD."""
        g = self._net_gen
        x, y = feed(g)
        x = self.net_aug(x, shared=False, generator=g, static=True)
        x, y_a, y_b, lam = cutmix_static(x, y, self.cfg.net_cutmix_p, generator=g)
        if self.shard_net:  # every k-th row here; the processes' sums add up to the whole batch's mean
            rows = slice(self.shard.rank, None, self.shard.world)
            x, y_a, y_b, scale = x[rows], y_a[rows], y_b[rows], len(x[rows]) / len(x)
        else:
            scale = 1.0
        loss = cutmix_loss(self.net(x), y_a, y_b, lam) * scale
        params = list(self.net.parameters())
        grads = torch.autograd.grad(loss, params)
        if self.shard_net:
            for g_ in grads:
                self.shard.sum_(g_)
        cfg = self.cfg
        sgd_step_(
            params,
            grads,
            self.momentum,
            lr=cfg.lr_net,
            momentum=cfg.momentum_net,
            weight_decay=cfg.weight_decay_net,
        )
        return loss.detach()

    # ------------------------------------------------------------ around the loop
    def draw_network(self, outer: int) -> None:
        """Outer iteration ``outer``'s matching network (seeded), written into the tensors the passes read."""
        fresh = self._fresh_net(outer)
        with torch.no_grad():
            for old, new in zip(self.net.state_dict().values(), fresh.state_dict().values(), strict=True):
                old.copy_(new)
            for buf in self.momentum:
                buf.zero_()

    def _fresh_net(self, outer: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # built on the CPU: only the CPU generator is drawn from
            torch.random.default_generator.manual_seed(derive(self.cfg.seed, "net", outer))
            return self.net_factory()

    @property
    def device(self) -> torch.device:
        """Where the synthetic images are (:meth:`prepare` puts everything else beside them)."""
        return self.synthetic.images.device

    def prepare(self) -> None:
        """Put the real set (this process's classes), selection, momentum and streams beside the images."""
        device, dtype = self.device, self.synthetic.images.dtype
        self.net.to(device)
        self.momentum = [
            m.to(device=p.device, dtype=p.dtype)
            for m, p in zip(self.momentum, self.net.parameters(), strict=True)
        ]
        if self.shard.sharded and self.real.complete:  # each process keeps only its classes' real images
            whole = self.real.images.nbytes
            self.real = self.real.keep(self.shard.classes)
            self._log_share("real", len(self.real.held), self.real.images.nbytes, whole, digits=1)
        self.real = self.real.to(device)
        self.real.mean, self.real.std = self.real.mean.to(dtype), self.real.std.to(dtype)
        self.sampler.to(device)
        self._gens = {c: torch.Generator(device=device) for c in self.shard.classes}
        self._net_gen = torch.Generator(device=device)
        self._owned_rows = torch.tensor(self.shard.classes, dtype=torch.long, device=device)  # into [K]
        self._syn_labels = self._owned_rows.repeat_interleave(self.cfg.ipc * self.cfg.factor**2)
        # every process starts from rank 0's network (replicated work may differ in the last bit)
        self.shard.broadcast_([p.data for p in self.net.parameters()])

    def initialize(self) -> None:
        """Set the held classes' images from the initialiser, on outer iteration 0's network.

        With ``warmup_epochs`` that network is trained first, as DREAM+ clusters on a trained network (step 0
        draws and warms the same network again).
        """
        self.warm_up(0)
        images = self.initializer(
            self.real,
            self.net,
            ipc=self.cfg.ipc,
            factor=self.cfg.factor,
            seed=derive(self.cfg.seed, "init"),
            classes=self.shard.classes,
        )
        with torch.no_grad():
            self.synthetic.images.copy_(images)

    def diagnostics(self, step: int, max_classes: int = 10, reference: int = 1000) -> dict[str, Tensor]:
        """The sampler's batches against random ones on the current network (Fig. 1a, 2c, 3).

        Each process analyses the classes it holds among the first ``max_classes``; merged, the values are
        one process's (every class has its own stream).
        """
        per_class = per_class_diagnostics(
            self.net,
            self.real,
            self.sampler,
            lambda c: generator(self.cfg.seed, "diagnostics", step, c),
            max_classes=max_classes,
            reference=reference,
            classes=self.real.held,
        )
        if self.shard.sharded:
            per_class = self.shard.merge(
                {c: {k: v.cpu() for k, v in d.items()} for c, d in per_class.items()}
            )
        return stack_diagnostics(per_class)

    def gathered(self, dst: int | None = None) -> tuple[Tensor, Tensor, Tensor] | None:
        """Every class's stored images, and the decoded images and labels, on every process or on ``dst``."""
        local = self.synthetic.images.detach()
        stored = self.shard.gather_classes(local, self.cfg.ipc, self.real.num_classes, dst)
        if stored is None:
            return None
        x, y = decode_classes(stored, range(self.real.num_classes), self.cfg.ipc, self.cfg.factor)
        return stored, x, y

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the network's and images' tensors: momentum, selection."""
        return {
            "net_momentum": [m.detach().clone() for m in self.momentum],
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into the tensors the passes read."""
        with torch.no_grad():
            for buf, saved in zip(self.momentum, state["net_momentum"], strict=True):
                buf.copy_(saved)
        self.sampler.load_state_dict(state["sampler"])

    # ---------------------------------------------------------------- plumbing
    def _every_class(self, losses: list[Tensor]) -> Tensor:
        """Every class's loss ([K]): this process's, plus (classes sharded) the other processes'."""
        per_class = torch.zeros(self.real.num_classes, device=self.device, dtype=self.synthetic.images.dtype)
        if losses:
            per_class[self._owned_rows] = torch.stack(losses).to(per_class.dtype)
        return self.shard.sum_(per_class)

    def _check_finite(self, classes: list[int], losses: list[Tensor], step: int) -> None:
        """Stop on a NaN/inf loss before it reaches the images (one host read per image step)."""
        if not losses:
            return
        stacked = torch.stack(losses)
        finite = torch.isfinite(stacked)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0])
            raise NonFiniteLossError(
                f"matching loss is {float(stacked[i])} for class {classes[i]} at step {step}; "
                "no image was stepped with it. Lower distill.lr_img or check the data"
            )

    def _log_share(self, kind: str, held: int, nbytes: int, whole: int, digits: int) -> None:
        """Say what share of a class-indexed set this process holds (a sharded run)."""
        log.info(
            f"rank %d holds the {kind} images of %d of %d classes: %.{digits}f of %.{digits}f MB",
            self.shard.rank,
            held,
            self.real.num_classes,
            nbytes / 2**20,
            whole / 2**20,
        )
