"""DistillModule: the bilevel distillation loop as a LightningModule (manual optimisation).

One Lightning step is one inner iteration: every class's synthetic images take one matching step against
the real batch its sampler gives, then the matching network trains on random real batches for ``n_data``
samples. Every ``inner_loops`` steps (one outer iteration) the network is re-drawn. All randomness of a
step comes from generators derived from (seed, step) (:mod:`dream_pl.seeding`), so a resumed run repeats
an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream_pl.augment import DiffAugment, cutmix, cutmix_loss, cutmix_static
from dream_pl.checkpoints import CONFIG_KEY
from dream_pl.config import PER_CLASS_SHARDED, ConfigError
from dream_pl.data import RealSet
from dream_pl.data.realset import draw_indices
from dream_pl.diagnostics import per_class_diagnostics, stack_diagnostics
from dream_pl.errors import UserError
from dream_pl.graphs import GraphedStep, sgd_step_, static_formulation, use_graphs
from dream_pl.matchers import supports_batched_classes
from dream_pl.samplers import Sampler
from dream_pl.schemas import DistillConfig
from dream_pl.seeding import derive, generator
from dream_pl.sharding import Shard
from dream_pl.synthetic import SyntheticData, SyntheticSet, decode_classes

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """The matching loss became NaN or inf; the run stops and keeps its last good checkpoint."""


AUTO_GPU_CLASS_CHUNK = 10  # distill.class_chunk=null on a GPU: batched, with bounded memory


def class_chunks(classes: list[int], chunk: int) -> list[list[int]]:
    """Consecutive groups of ``chunk`` of ``classes`` (the last may be smaller), in order."""
    return [classes[i : i + chunk] for i in range(0, len(classes), chunk)]


def effective_lr_img(lr_img: float, ipc: int, size: int, size_base: int) -> float:
    """IDC's image learning rate: ``lr_img * (ipc / 10) * (size / size_base)^2``.

    >>> round(effective_lr_img(1e-4, 10, 28, 32), 8)
    7.656e-05
    """
    return lr_img * (ipc / 10) * (size / size_base) ** 2


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, max RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class DistillModule(pl.LightningModule):
    """Learns the synthetic set; the network factory, matcher, sampler and initialiser are injected.

    The algorithm reads top to bottom in :meth:`distill_step` (one inner iteration) and
    :meth:`refresh_selection` (one clustering event, fired by ``ClusteringCallback``); the Lightning hooks
    only call them and log. Outside a Trainer (benchmarks), :meth:`prepare` then ``distill_step`` runs
    the same code.
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
        dataset: str = "",
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.real, self.net_factory, self.matcher = real, net_factory, matcher
        self.sampler, self.initializer, self.cfg, self.dataset = sampler, initializer, cfg, dataset
        self.run_config = run_config or {}  # stored in checkpoints and exports: what resume checks against
        _, channels, size, _ = real.images.shape
        self.size, self._image_shape = size, (channels, size, size)
        # the images of this process's classes are allocated once they are known (setup / prepare)
        self.synthetic = SyntheticSet(
            torch.zeros(0, *self._image_shape), real.num_classes, cfg.ipc, cfg.factor, ()
        )
        self.register_buffer("initialized", torch.tensor(False))
        self.match_aug = DiffAugment(cfg.match_dsa)
        self.net_aug = DiffAugment(cfg.net_dsa)
        self._standalone_opt: torch.optim.Optimizer | None = None
        self.shard = Shard(0, 1, tuple(range(real.num_classes)))  # set for real in setup() / prepare()
        self.static = self.capture = False  # the capturable step / CUDA graphs: decided in prepare()
        self.shard_net = False  # split the network updates over the processes: decided in prepare()
        self._graphs: dict[str, tuple[tuple[int, ...], GraphedStep]] = {}
        self._new_net(outer=0)

    # ----------------------------------------------------------------- setup
    def _new_net(self, outer: int) -> None:
        """Draw the matching network of outer iteration ``outer`` (seeded) and its optimiser."""
        with torch.random.fork_rng(devices=[]):  # built on the CPU: only the CPU generator is drawn from
            torch.random.default_generator.manual_seed(derive(self.cfg.seed, "net", outer))
            net = self.net_factory()
        if self.static:  # into the tensors the captured steps read, with the fresh optimiser's zero momentum
            with torch.no_grad():
                for old, new in zip(self.net.state_dict().values(), net.state_dict().values(), strict=True):
                    old.copy_(new)
                for buf in self._net_momentum():
                    buf.zero_()
            return
        self.net = net.to(self.device)
        self.net_opt = torch.optim.SGD(
            self.net.parameters(),
            lr=self.cfg.lr_net,
            momentum=self.cfg.momentum_net,
            weight_decay=self.cfg.weight_decay_net,
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD on the stored images with IDC's IPC- and size-scaled learning rate."""
        lr = effective_lr_img(self.cfg.lr_img, self.cfg.ipc, self.size, self.cfg.lr_size_base)
        return torch.optim.SGD([self.synthetic.images], lr=lr, momentum=self.cfg.momentum_img)

    def setup(self, stage: str) -> None:
        """This process's share of the synthetic set, allocated before a checkpoint is restored into it.

        Lightning calls this once the processes' group exists, before it restores a checkpoint and builds
        the image optimiser, so the parameter the optimiser and the checkpoint see is the held share.
        """
        del stage
        self.shard = Shard.current(self.real.num_classes)
        self._hold_synthetic()

    def _hold_synthetic(self) -> None:
        """Allocate (zeros) the stored images of this process's classes, unless already held."""
        classes = self.shard.classes
        if self.synthetic.classes == classes:
            return
        rows = len(classes) * self.cfg.ipc
        images = torch.zeros(rows, *self._image_shape, device=self.device, dtype=self.dtype)
        self.synthetic = SyntheticSet(images, self.real.num_classes, self.cfg.ipc, self.cfg.factor, classes)
        if self.shard.sharded:
            per_class = images.element_size() * self.cfg.ipc * math.prod(self._image_shape)
            self._log_share(
                "synthetic", len(classes), images.nbytes, per_class * self.real.num_classes, digits=2
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

    def prepare(self) -> None:
        """Move the real set to the module's device and initialise the synthetic set (unless restored)."""
        if self.cfg.class_chunk not in (None, 1) and not self._can_batch():
            raise ConfigError(
                f"distill.class_chunk={self.cfg.class_chunk} needs a matcher with a batched pass and a "
                "matching network without batch norm; allowed here: 1 (one class at a time) or null"
            )
        self.shard = Shard.current(self.real.num_classes)
        self._hold_synthetic()
        if self.shard.sharded and self.cfg.image_step == "per_class":
            raise ConfigError(PER_CLASS_SHARDED)
        self._graphs = {}  # tensors may have moved since any capture
        self._net_optimizer_to_device()
        self._choose_formulation()
        # batch norm's statistics over a share of the batch would differ from the whole batch's: replicated
        self.shard_net = (
            self.shard.sharded and self.cfg.shard_net_update and supports_batched_classes(self.net)
        )
        if self.shard.sharded and self.real.complete:  # each process keeps only its classes' real images
            whole = self.real.images.nbytes
            self.real = self.real.keep(self.shard.classes)
            self._log_share("real", len(self.real.held), self.real.images.nbytes, whole, digits=1)
        self.real = self.real.to(self.device)
        self.sampler.to(self.device)
        if not bool(self.initialized):
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
            self.initialized.fill_(True)
        # every process starts from rank 0's network (replicated work may differ in the last bit)
        self.shard.broadcast_([p.data for p in self.net.parameters()])

    def on_fit_start(self) -> None:
        """:meth:`prepare` on the Trainer's device."""
        self.prepare()

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        """A stream of step numbers: the data lives on the device in :class:`RealSet`."""
        return torch.utils.data.DataLoader(_Steps(), batch_size=None)

    # ------------------------------------------------------------ algorithm
    def refresh_selection(self, step: int) -> dict[str, float]:
        """A clustering event: the sampler re-selects every class's matching batch on the current network.

        Returns the statistics to log (keys relative to ``distill/``).
        """
        start = time.perf_counter()
        seed = derive(self.cfg.seed, "cluster", step)
        stats = self.sampler.refresh(self.net, self.real, seed=seed, classes=list(self.shard.classes))
        stats = self.shard.mean_over_classes(stats, len(self.shard.classes))
        if self.shard.sharded:  # every process keeps every class's selection: checkpoints need it
            merged = self.shard.merge(self.sampler.owned(self.shard.classes))
            self.sampler.adopt(self.real.num_classes, merged)
            self.sampler.to(self.device)
        return {"time/cluster_s": time.perf_counter() - start} | {f"cluster/{k}": v for k, v in stats.items()}

    def distill_step(self, step: int) -> dict[str, Tensor | float]:
        """One inner iteration of DREAM/IDC.

        1. At the start of an outer iteration, clamp the stored images to [0, 1] (IDC).
        2. Per class, the matching loss against the sampler's real batch under one shared DSA draw,
           back-propagated into the images only.
        3. ``image_step=joint``: one image-optimiser step with all classes' gradients. ``per_class``: one
           step after each class, as the authors' loop does; the optimiser's momentum buffer then also
           moves the classes already stepped in this iteration (their gradient is zero, their momentum
           is not). Either way Lightning's step counter advances once.
        4. Train the matching network on random real batches for ``n_data`` samples.
        5. At the end of an outer iteration, draw the next outer iteration's network.

        Returns the quantities to log (keys relative to ``distill/``); losses stay on the device.
        """
        outer, inner = divmod(step, self.cfg.inner_loops)
        if inner == 0:
            self.synthetic.clamp_()
        opt = self._image_optimizer()
        opt.zero_grad()
        t0 = time.perf_counter()
        owned = list(self.shard.classes)
        losses = list(self._match_static(step).unbind()) if self.static else self._match_host(step, opt)
        per_class = self._all_classes(owned, losses)
        if self.cfg.image_step == "joint":
            self._check_finite(per_class, step)
            images = self.synthetic.images
            if images.grad is None:  # no class here (more processes than classes): a zero step, so that
                images.grad = torch.zeros_like(images)  # every process's optimiser has state to gather
            opt.step()
        t1 = time.perf_counter()
        # the network's batches come from streams of their own, so which sampler matches (and how many
        # draws it takes) never changes how the matching network trains
        if self.static:
            net_loss = self._train_net_static(step)
        else:
            net_loss = self.train_net(
                generator(self.cfg.seed, "step", step, "net_host"),
                generator(self.cfg.seed, "step", step, "net_device", device=self.device),
            )
        t2 = time.perf_counter()
        if inner == self.cfg.inner_loops - 1:
            self._new_net(outer + 1)
        return {
            "loss": per_class.mean(),
            **{f"loss_class/{c}": loss for c, loss in enumerate(per_class)},
            "net_loss": net_loss,
            "time/match_s": t1 - t0,
            "time/net_s": t2 - t1,
            "outer": float(outer),
        }

    def _match_host(self, step: int, opt: torch.optim.Optimizer) -> list[Tensor]:
        """The owned classes' losses, chunk by chunk, back-propagated into the images as they go.

        ``image_step=per_class`` steps the optimiser after each class (chunks of one).
        """
        losses: list[Tensor] = []
        owned = list(self.shard.classes)
        for classes in class_chunks(owned, self.class_chunk()):
            if len(classes) == 1:
                loss = self.match_class(classes[0], step).unsqueeze(0)
            else:
                loss = self.match_classes(classes, step)
            self._backward(loss.sum())
            losses.extend(loss.detach().unbind())
            if self.cfg.image_step == "per_class":
                self._check_finite(torch.stack(losses), step)
                # only the wrapped optimiser counts a Lightning step: the last class's step goes through it
                (opt if classes[-1] == owned[-1] else getattr(opt, "optimizer", opt)).step()
                opt.zero_grad()
        return losses

    def match_inputs(self, c: int, step: int) -> tuple[Tensor, Tensor]:
        """Class ``c``'s real batch (from its sampler) and synthetic images, under one shared DSA draw.

        Every draw comes from class ``c``'s own streams of this step, so a class's batch is the same
        whichever other classes are matched before it (one at a time, batched, or on another process).
        """
        g_cpu = generator(self.cfg.seed, "step", step, "host", c)
        g_dev = generator(self.cfg.seed, "step", step, "device", c, device=self.device)
        idx = self.sampler.indices(self.real, c, g_dev)  # drawn where the images live: no host copy
        return self._augmented_pair(c, self.real.class_images(c, idx), g_dev, choice_generator=g_cpu)

    def _augmented_pair(
        self, c: int, x_real: Tensor, g: torch.Generator, **pick: Any
    ) -> tuple[Tensor, Tensor]:
        """``x_real`` and class ``c``'s decoded synthetic images, under one shared DSA draw from ``g``.

        Above ``batch_syn_max`` synthetic images, a random subset; ``pick`` says how DSA picks its
        geometric op (a host ``choice_generator``, or ``static=True``: see DiffAugment).
        """
        x_syn = self.synthetic.class_decoded(c)
        if len(x_syn) > self.cfg.batch_syn_max:
            x_syn = x_syn[draw_indices(len(x_syn), self.cfg.batch_syn_max, g)]
        x = self.match_aug(torch.cat([x_real, self.real.normalize(x_syn)]), shared=True, generator=g, **pick)
        return x[: len(x_real)], x[len(x_real) :]

    def match_class(self, c: int, step: int) -> Tensor:
        """Matching loss of class ``c`` against its sampler's real batch, under one shared DSA draw."""
        return self._class_losses([c], [self.match_inputs(c, step)])[0]

    def match_classes(self, classes: list[int], step: int) -> Tensor:
        """Losses of several classes in one batched pass ([K]); the same draws and values as one at a time."""
        return self._class_losses(classes, [self.match_inputs(c, step) for c in classes])

    def _class_losses(self, classes: list[int], inputs: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Matching losses [K] of ``classes`` on their (real, synthetic) inputs.

        One class goes through the matcher itself, several through its batched (vmapped) pass.
        """
        if len(classes) == 1:
            (x_real, x_syn), c = inputs[0], classes[0]
            y_real, y_syn = self._labels(c, len(x_real)), self._labels(c, len(x_syn))
            return self.matcher(self.net, x_real, y_real, x_syn, y_syn).unsqueeze(0)
        x_real = torch.stack([xr for xr, _ in inputs])
        x_syn = torch.stack([xs for _, xs in inputs])
        y_real = torch.stack([self._labels(c, x_real.shape[1]) for c in classes])
        y_syn = torch.stack([self._labels(c, x_syn.shape[1]) for c in classes])
        return self.matcher.batched(self.net, x_real, y_real, x_syn, y_syn)

    def class_chunk(self) -> int:
        """Classes per matching pass: ``distill.class_chunk``, or (null) 10 on a GPU and 1 on a CPU.

        The batched pass holds every class's second-order graph at once (memory grows with the chunk:
        ~0.75 GB per class at CIFAR shapes, measured on the CPU), so null bounds it at 10 classes.
        """
        chunk = self.cfg.class_chunk
        if self.cfg.image_step == "per_class":
            return 1  # one optimiser step per class: sequential by nature
        if chunk is None:
            chunk = AUTO_GPU_CLASS_CHUNK if self.device.type == "cuda" and self._can_batch() else 1
        return chunk or max(len(self.shard.classes), 1)

    def _can_batch(self) -> bool:
        return hasattr(self.matcher, "batched") and supports_batched_classes(self.net)

    def _all_classes(self, owned: list[int], losses: list[Tensor]) -> Tensor:
        """Every class's loss ([K]): this process's, plus (classes sharded) the other processes'."""
        dtype = losses[0].dtype if losses else torch.get_default_dtype()
        per_class = torch.zeros(self.real.num_classes, device=self.device, dtype=dtype)
        if losses:
            per_class[torch.tensor(owned, device=self.device)] = torch.stack(losses)
        return self.shard.sum_(per_class)

    def _labels(self, c: int, n: int) -> Tensor:
        return torch.full((n,), c, device=self.device, dtype=torch.long)

    def _real_batch(self, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """A random real batch over every class; classes sharded, each process adds the rows it holds."""
        x, y = self.real.sample(self.cfg.batch_real, g)
        if not self.real.complete:
            self.shard.sum_(x)
        return x, y

    def train_net(self, g_cpu: torch.Generator, g_dev: torch.Generator) -> Tensor:
        """Train the matching network on random real batches (per-sample DSA + CutMix) for n_data samples.

        Returns the mean loss, on the device (read when logged, not per network step).
        """
        self.net.train()
        steps = math.ceil(self.cfg.n_data / self.cfg.batch_real)
        total = torch.zeros((), device=self.device)
        for _ in range(steps):
            x, y = self._real_batch(g_dev)
            x = self.net_aug(x, shared=False, generator=g_dev, choice_generator=g_cpu)
            if float(torch.rand((), generator=g_cpu)) < self.cfg.net_cutmix_p:
                x, y_a, y_b, lam = cutmix(x, y, generator=g_cpu)
                loss = self._net_loss(x, y_a, y_b, lam)
            elif self.shard_net:
                loss = self._net_loss(x, y, y, 1.0)
            else:
                loss = F.cross_entropy(self.net(x), y)
            self.net_opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.shard_net:
                for p in self.net.parameters():
                    self.shard.sum_(p.grad)
            self.net_opt.step()
            # every process took the same step; rank 0's result is the run's (exact for any k)
            self.shard.broadcast_([p.data for p in self.net.parameters()])
            total += loss.detach()
        return self._whole_batch_loss(total) / steps

    def _net_loss(self, x: Tensor, y_a: Tensor, y_b: Tensor, lam: float | Tensor) -> Tensor:
        """The network's CutMix-weighted loss on the batch, or (``shard_net``) on this process's rows of it.

        A process's rows are every k-th of the batch (every process augmented the whole batch alike); their
        summed losses over the batch size add up, over the processes, to the whole batch's mean loss, and
        so do the gradients (up to floating-point order).
        """
        if not self.shard_net:
            return cutmix_loss(self.net(x), y_a, y_b, lam)
        rows = slice(self.shard.rank, None, self.shard.world)
        logits = self.net(x[rows])
        ce_a = F.cross_entropy(logits, y_a[rows], reduction="sum")
        ce_b = F.cross_entropy(logits, y_b[rows], reduction="sum")
        return (lam * ce_a + (1.0 - lam) * ce_b) / len(x)

    def _whole_batch_loss(self, total: Tensor) -> Tensor:
        """The loss to log: summed over the processes when each computed only its rows."""
        return self.shard.sum_(total) if self.shard_net else total

    # ------------------------------------------------- the capturable step (distill.compile)
    def _choose_formulation(self) -> None:
        """``distill.compile``: the capturable step (device-side draws and decisions) and CUDA graphs or not.

        Graphs need the joint image step (per_class steps the optimiser between classes) and no loss scaler
        (16-bit precision scales the loss through Lightning's backward, which the captured step bypasses).
        """
        mode = self.cfg.compile
        precision = str(getattr(self._trainer, "precision", "32-true")) if self._trainer is not None else ""
        blockers = []
        if self.cfg.image_step != "joint":
            blockers.append(f"distill.image_step={self.cfg.image_step}")
        if precision in ("16-mixed", "16"):
            blockers.append(f"trainer.precision={precision}")
        if blockers and mode == "on":
            raise ConfigError(
                f"distill.compile=on cannot run with {' and '.join(blockers)}; allowed: distill.compile=auto "
                "or off (or distill.image_step=joint with a precision without a loss scaler)"
            )
        self.static = not blockers and static_formulation(mode, self.device)
        # collectives (classes sharded) stay outside graphs: the capturable step then runs eagerly
        self.capture = self.static and use_graphs(mode, self.device) and not self.shard.sharded
        before = getattr(self, "_resumed_formulation", None)
        if before is not None and before != self.formulation:  # e.g. a GPU run resumed on a CPU under auto
            log.warning(
                "this run's checkpoint was written by the %s step and it continues with the %s step "
                "(distill.compile=%s on %s): from here on its draws differ from an uninterrupted run's",
                before,
                self.formulation,
                mode,
                self.device.type,
            )
        if self.static:
            owned = self.shard.classes
            self._match_gens = {c: torch.Generator(device=self.device) for c in owned}
            self._net_gen = torch.Generator(device=self.device)
            self._net_momentum()

    @property
    def formulation(self) -> str:
        """Which step runs: "static" (the capturable one, captured or not) or "host" (host-decided draws).

        The two draw different random streams, so a run that changes formulation on resume is not bitwise
        an uninterrupted one; whether the static step is captured does not change its results.
        """
        return "static" if self.static else "host"

    def _net_momentum(self) -> list[Tensor]:
        """The network optimiser's momentum buffers, created as zeros where missing (= SGD's first step)."""
        buffers = []
        for p in self.net.parameters():
            state = self.net_opt.state[p]
            if not isinstance(state.get("momentum_buffer"), Tensor):
                state["momentum_buffer"] = torch.zeros_like(p)
            buffers.append(state["momentum_buffer"])
        return buffers

    def _net_optimizer_to_device(self) -> None:
        """Put the network optimiser's state where its parameters are, in their dtype.

        Lightning restores a checkpoint before it moves the module to its device, so a resumed run's
        momentum buffers (loaded beside the parameters) would stay on the CPU while the network trains on
        the GPU; this optimiser is the module's own, not one Lightning moves.
        """
        for p in self.net.parameters():
            state = self.net_opt.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, Tensor) and (value.device, value.dtype) != (p.device, p.dtype):
                    state[key] = value.to(device=p.device, dtype=p.dtype)

    def _run(
        self,
        name: str,
        fn: Callable[..., Any],
        inputs: list[Tensor],
        state: list[Tensor],
        generators: list[torch.Generator],
    ) -> Any:
        """``fn(*inputs)``: replayed from a CUDA graph when capturing, else called.

        A graph is captured on first use and again whenever a tensor it reads was replaced (a checkpoint
        load swaps the network optimiser's buffers, a new device moves everything).
        """
        if not self.capture:
            return fn(*inputs)
        tensors = [*inputs, *state, self.synthetic.images, *self.net.parameters(), *self.net.buffers()]
        key = tuple(t.data_ptr() for t in tensors)
        cached = self._graphs.get(name)
        if cached is None or cached[0] != key:
            try:
                cached = (key, GraphedStep(fn, inputs, state=state, generators=generators))
            except RuntimeError as error:  # an op this torch cannot capture: auto falls back, on says so
                if self.cfg.compile == "on":
                    raise
                log.warning(
                    "distill.compile=auto: capturing the %s step failed (%s); running eagerly", name, error
                )
                self.capture, self._graphs = False, {}
                return fn(*inputs)
            self._graphs[name] = cached
        return cached[1]()

    def _match_static(self, step: int) -> Tensor:
        """Every owned class's matching loss ([k]) and, into ``images.grad``, their summed image gradient.

        The real batches' indices are drawn on the host's orders (the sampler may read its selection)
        into a fixed buffer; everything after (synthetic subset, DSA, both passes of every class, the
        backward into the images) is one capturable function of that buffer and the class streams.
        """
        owned = list(self.shard.classes)
        images = self.synthetic.images
        if not owned:  # more processes than classes: nothing to match here (distill_step steps with zeros)
            return images.new_zeros(0)
        for c in owned:
            self._match_gens[c].manual_seed(derive(self.cfg.seed, "step", step, "device", c))
        idx = torch.stack(
            [
                self.sampler.indices(self.real, c, self._match_gens[c]) + self.real.class_slice(c).start
                for c in owned
            ]
        )
        buffer = getattr(self, "_real_idx", None)
        if buffer is None or buffer.shape != idx.shape:
            self._real_idx = buffer = torch.empty_like(idx)
        buffer.copy_(idx)
        # a network with batch norm updates its running statistics while matching: state of the graph
        state = list(self.net.buffers())
        losses, grad = self._run(
            "match", self._match_all, [buffer], state, [self._match_gens[c] for c in owned]
        )
        images.grad = grad.clone()
        return losses.clone()

    def _match_all(self, real_idx: Tensor) -> tuple[Tensor, Tensor]:
        """The capturable matching pass: losses [k] and d(sum of losses)/d(stored images)."""
        owned = list(self.shard.classes)
        images = self.synthetic.images
        grad = torch.zeros_like(images)
        losses = []
        for chunk in class_chunks(list(range(len(owned))), self.class_chunk()):
            classes = [owned[i] for i in chunk]
            inputs = [  # the real indices given, every draw on the class's device stream
                self._augmented_pair(c, self.real.get(real_idx[i]), self._match_gens[c], static=True)
                for i, c in zip(chunk, classes, strict=True)
            ]
            loss = self._class_losses(classes, inputs)
            grad += torch.autograd.grad(loss.sum(), images)[0]
            losses.append(loss.detach())
        return torch.cat(losses), grad

    def _train_net_static(self, step: int) -> Tensor:
        """:meth:`train_net` as repeated replays of one capturable network step; returns the mean loss."""
        self.net.train()
        self._net_gen.manual_seed(derive(self.cfg.seed, "step", step, "net_device"))
        params = list(self.net.parameters())
        state = [*params, *self.net.buffers(), *self._net_momentum()]
        steps = math.ceil(self.cfg.n_data / self.cfg.batch_real)
        total = torch.zeros((), device=self.device)
        for _ in range(steps):
            total += self._run("net", self._net_step, [], state, [self._net_gen])
            self.shard.broadcast_([p.data for p in params])
        return self._whole_batch_loss(total) / steps

    def _net_step(self) -> Tensor:
        """One capturable network update: batch, per-sample DSA, CutMix (decided on the device), SGD."""
        g = self._net_gen
        x, y = self._real_batch(g)
        x = self.net_aug(x, shared=False, generator=g, static=True)
        x, y_a, y_b, lam = cutmix_static(x, y, self.cfg.net_cutmix_p, generator=g)
        loss = self._net_loss(x, y_a, y_b, lam)
        params = list(self.net.parameters())
        grads = torch.autograd.grad(loss, params)
        if self.shard_net:  # classes sharded (never captured): the processes' rows add up to the batch
            for grad in grads:
                self.shard.sum_(grad)
        sgd_step_(
            params,
            grads,
            self._net_momentum(),
            lr=self.cfg.lr_net,
            momentum=self.cfg.momentum_net,
            weight_decay=self.cfg.weight_decay_net,
        )
        return loss.detach()

    def selection_diagnostics(self, step: int, max_classes: int, reference: int) -> dict[str, Tensor]:
        """The sampler's matching batches against random ones on the current network (Fig. 1a, 2c, 3).

        Classes sharded, each process analyses the classes it holds among the first ``max_classes`` and
        the results are merged: the same values as one process (every class has its own stream).
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

    # --------------------------------------------------------------- plumbing
    def _image_optimizer(self) -> torch.optim.Optimizer:
        """Lightning's wrapped optimiser inside a Trainer (it counts the steps), a plain one outside."""
        if self._trainer is not None:
            return self.optimizers()
        if self._standalone_opt is None:
            self._standalone_opt = self.configure_optimizers()
        return self._standalone_opt

    def _backward(self, loss: Tensor) -> None:
        """Back-propagate into the stored images only (never into the matching network)."""
        if self._trainer is not None:
            self.manual_backward(loss, inputs=[self.synthetic.images])
        else:
            loss.backward(inputs=[self.synthetic.images])

    def _check_finite(self, per_class: Tensor, step: int) -> None:
        """Stop on a NaN/inf loss before it reaches the images (one host sync per image step)."""
        finite = torch.isfinite(per_class)
        if not bool(finite.all()):
            c = int((~finite).nonzero()[0])
            raise NonFiniteLossError(
                f"matching loss is {float(per_class[c])} for class {c} at step {step}; "
                "no image was stepped with it. Lower distill.lr_img or check the data"
            )

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        """:meth:`distill_step` at Lightning's step counter, logged under ``distill/``."""
        del batch, batch_idx
        out = self.distill_step(self.global_step)
        self.log_dict({f"distill/{k}": v for k, v in out.items()}, on_step=True)
        self.log("loss", out["loss"], prog_bar=True, logger=False)

    def on_train_end(self) -> None:
        """Say what this process held at its peak (per rank in a sharded run: its share of the classes)."""
        kind = "CUDA allocator peak" if self.device.type == "cuda" else "max RSS"
        log.info("rank %d peak memory: %.0f MB (%s)", self.shard.rank, peak_memory_mb(self.device), kind)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Record the run's peak memory (CUDA allocator peak or CPU max RSS)."""
        self.log("distill/peak_mem_mb", peak_memory_mb(self.device), on_step=True)

    # ------------------------------------------------------------- artifacts
    def export(self, dst: int | None = None) -> SyntheticData | None:
        """The whole synthetic set, decoded, in pixel space, with what is needed to evaluate it.

        Classes sharded, every process calls this (a collective): the set is gathered on every process
        (``dst=None``) or on rank ``dst`` alone (the others get ``None``).
        """
        local = self.synthetic.images.detach()
        stored = self.shard.gather_classes(local, self.cfg.ipc, self.real.num_classes, dst)
        if stored is None:
            return None
        x, y = decode_classes(stored, range(self.real.num_classes), self.cfg.ipc, self.cfg.factor)
        return SyntheticData(
            images=x.cpu(),
            labels=y.cpu(),
            factor=self.cfg.factor,
            dataset=self.dataset,
            mean=tuple(self.real.mean.flatten().tolist()),
            std=tuple(self.real.std.flatten().tolist()),
            stored=stored.cpu(),
            config=self.run_config,
        )

    # ----------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add what Lightning does not know: the network optimiser, the selection, the run's config.

        Classes sharded, the synthetic set and its optimiser's momentum are gathered on rank 0 (the process
        that writes), so a checkpoint always holds every class, whatever the number of processes.
        """
        if self.shard.sharded:
            self._whole_set_into(checkpoint)
        checkpoint[CONFIG_KEY] = self.run_config
        checkpoint["net_optimizer"] = self.net_opt.state_dict()
        checkpoint["sampler"] = self.sampler.state_dict()
        checkpoint["torch_rng"] = torch.get_rng_state()
        checkpoint["step_formulation"] = self.formulation

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the network optimiser and the sampler's selection; keep this process's classes' images.

        Runs before Lightning loads the state dict and the image optimiser from ``checkpoint``: their rows of
        every class are cut to the held ones here (:meth:`setup` sized the set), whatever number of
        processes wrote it.
        """
        states = per_image_states(checkpoint)
        put_per_image_states(checkpoint, {k: self.shard.own_rows(v, self.cfg.ipc) for k, v in states.items()})
        self._pending_net_opt = checkpoint["net_optimizer"]
        self.sampler.load_state_dict(checkpoint["sampler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self._resumed_formulation = checkpoint.get("step_formulation")

    def _whole_set_into(self, checkpoint: dict[str, Any]) -> None:
        """Replace the held rows of the images, labels and momentum in ``checkpoint`` by every class's."""
        whole = {
            key: self.shard.gather_classes(local, self.cfg.ipc, self.real.num_classes, dst=0)
            for key, local in per_image_states(checkpoint).items()
        }
        if self.shard.rank == 0:
            put_per_image_states(checkpoint, whole)

    def load_state_dict(
        self, state_dict: dict[str, Tensor], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load weights, then the network optimiser state stashed by :meth:`on_load_checkpoint`."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        pending = getattr(self, "_pending_net_opt", None)
        if pending is not None:
            self.net_opt.load_state_dict(pending)
            self._pending_net_opt = None
        return result


IMAGE_KEYS = ("synthetic.images", "synthetic.labels")  # the module's tensors with one row per stored image


def per_image_states(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """A checkpoint's tensors with a row per stored image: images, labels, the image momentum (once stepped).

    The momentum is the image optimiser's (Lightning's first and only) buffer of its one parameter.
    """
    states = {key: checkpoint["state_dict"][key] for key in IMAGE_KEYS}
    image_opt = (checkpoint.get("optimizer_states") or [{}])[0].get("state", {}).get(0, {})
    if isinstance(image_opt.get("momentum_buffer"), Tensor):
        states["momentum_buffer"] = image_opt["momentum_buffer"]
    return states


def put_per_image_states(checkpoint: dict[str, Any], states: dict[str, Tensor]) -> None:
    """Write :func:`per_image_states`' tensors back into ``checkpoint``.

    The optimiser's entries are replaced by copies: ``Optimizer.state_dict()`` shares the live
    per-parameter state dicts, so writing into them would change the running optimiser.
    """
    for key in IMAGE_KEYS:
        checkpoint["state_dict"][key] = states[key]
    if "momentum_buffer" in states:
        image_opt = checkpoint["optimizer_states"][0]
        param_states = {
            **image_opt["state"],
            0: {**image_opt["state"][0], "momentum_buffer": states["momentum_buffer"]},
        }
        checkpoint["optimizer_states"][0] = {**image_opt, "state": param_states}


class _Steps(torch.utils.data.IterableDataset):
    """An endless stream of integers; Lightning's ``max_steps`` ends the run."""

    def __iter__(self):  # noqa: ANN204
        i = 0
        while True:
            yield torch.tensor(i)
            i += 1
