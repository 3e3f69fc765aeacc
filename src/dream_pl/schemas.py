"""What the code reads from the config blocks: frozen dataclasses, no defaults, no Hydra.

The values, with the paper's defaults and a comment each, live in the yaml under ``conf/``. The config
layer (:mod:`dream_pl.config`) derives the blocks' structured-config schemas from these classes, registers
them with Hydra (so composition refuses unknown keys and wrong types) and builds them from a block
(``config.from_block``). The engine imports them without importing Hydra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class DistillConfig:
    """The loop's hyper-parameters: the ``distill`` block of ``conf/train.yaml``, plus ``ipc`` and ``seed``.

    The values and what each means live in the yaml; this is their schema.
    """

    ipc: int
    seed: int
    method: str  # the recipe these values are (conf/method): idc | dc | dsa | dm | dream_plus
    inner_loops: int
    factor: int
    lr_img: float
    lr_rule: str  # how lr_img becomes the pixel-space lr: LR_RULES
    lr_size_base: int
    momentum_img: float
    clamp: bool  # project the images to [0, 1] at each outer iteration (IDC)
    batch_real: int
    batch_syn_max: int
    net_data: str  # what the matching network trains on between matches: NET_DATA
    n_data: int | None  # net_data=real: samples per inner iteration
    net_epochs: int | None  # net_data=synthetic: epochs over the synthetic set per inner iteration
    warmup_epochs: float  # real-data epochs a fresh network trains before its first match (DREAM+)
    lr_net: float
    momentum_net: float
    weight_decay_net: float
    match_dsa: str
    net_dsa: str
    net_cutmix_p: float
    image_step: str
    cuda_graphs: bool  # replay the matching pass and the network update from CUDA graphs on a GPU
    shard_net_update: bool  # classes sharded: split each network update's batch over the processes
    save_every: int


IMAGE_STEPS = ("joint", "per_class")
LR_RULES = (
    "idc",
    "normalized",
)  # idc: scaled by ipc and size, on pixels | normalized: DC's, on normalised images
NET_DATA = ("real", "synthetic", "none")  # IDC | DC, DSA | DM
METHODS = ("idc", "dc", "dsa", "dm", "dream_plus")
LR_AUTO = "auto"  # evaluation.lr: chosen from evaluation.lr_grid on the held-out validation split


@dataclass(frozen=True)
class EvalProtocol:
    """How a set is evaluated: the protocol fields of the ``evaluation`` config block.

    The values, with the paper's defaults and what each means, live in ``conf/evaluation/default.yaml``;
    ``dream_pl.config.protocol_from`` builds this from it (the block's schema derives from this class).
    """

    epochs: int
    repeats: int
    batch_size: int
    lr: float | None  # None: chosen on a validation split (evaluation.lr=auto; dream_pl.evaluation.selection)
    momentum: float
    weight_decay: float
    lr_milestones: tuple[float, ...]
    lr_gamma: float
    dsa: str
    cutmix_p: float
    test_batch: int
    stacked: bool | None  # None: vmap-stacked on a GPU when the architecture allows, looped on a CPU
    compile: str  # auto | on | off: CUDA-graph capture of the training step (dream_pl.graphs)

    @staticmethod
    def recipe_fields() -> tuple[str, ...]:
        """The fields that define what is measured (the whole set's are ``evaluation.whole_protocol``).

        The others say how it executes (test batch, stacking, CUDA graphs), which leaves the accuracies as
        they are (stacked and looped repeats are equal, captured and eager steps are equal).
        """
        execution = ("test_batch", "stacked", "compile")
        return tuple(f.name for f in fields(EvalProtocol) if f.name not in execution)

    def milestones(self) -> tuple[int, ...]:
        """Epochs at which the lr decays (666 and 833 for 1,000 epochs)."""
        return tuple(math.floor(f * self.epochs + 1e-6) for f in self.lr_milestones)

    def describe(self) -> str:
        """One line stating the protocol beside every reported number."""
        aug = self.dsa or "no DSA"
        mix = f" + CutMix p={self.cutmix_p}" if self.cutmix_p > 0 else ""
        return (
            f"{self.epochs} epochs, SGD lr {'auto' if self.lr is None else self.lr} "
            f"(x{self.lr_gamma} at {list(self.milestones())}), "
            f"batch {self.batch_size}, DSA {aug}{mix}, {self.repeats} repeat{'s' * (self.repeats != 1)}, "
            "final-epoch test accuracy"
        )
