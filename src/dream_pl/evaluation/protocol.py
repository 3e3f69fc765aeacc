"""The evaluation protocol (paper + reference code) and the function that applies it to one set.

Protocol: SGD lr 0.01, momentum 0.9, wd 5e-4, batch 64, lr x0.2 at 2/3 and 5/6 of training, DSA with
per-sample draws plus CutMix, 1,000 epochs; the reported number is the *final-epoch* test accuracy,
mean ± std over repeats. Nothing is selected on the test set.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from dream_pl.evaluation.stacked import StackedClassifier
from dream_pl.quiet import quiet_lightning
from dream_pl.schemas import EvalProtocol


@dataclass
class EvalResult:
    """Accuracies of one set on one architecture."""

    model: str
    accuracies: list[float]
    seconds: float
    protocol: str
    images: int
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        """Mean accuracy in percent."""
        return 100 * statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        """Population std of the accuracy in percent (0 for one repeat)."""
        return 100 * statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def as_dict(self) -> dict:
        """JSON-ready summary."""
        return {**asdict(self), "mean": self.mean, "std": self.std}


def own_device() -> int | list[int]:
    """One device: this process's GPU inside a DDP run (``devices=1`` would mean GPU 0 for every process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.cuda.is_available():
        return [torch.cuda.current_device()]
    return 1


def on_gpu(accelerator: str) -> bool:
    """Does a Trainer with ``accelerator`` train on a CUDA device?"""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def use_stacking(requested: bool | None, accelerator: str) -> bool | None:
    """Stack repeats under vmap on a GPU only, unless asked explicitly.

    vmap turns each convolution into a grouped one; on a CPU that is slower than running the repeats in
    a loop (benchmarks/evaluator.py: 0.65x on 2 cores), on a GPU it fills the device. ``None`` lets the
    architecture decide (no batch norm) once a GPU is in use.
    """
    if requested is not None:
        return requested
    return None if on_gpu(accelerator) else False


class EpochTicks(pl.Callback):
    """Report each finished epoch, with the networks it trained, to ``tick`` (an evaluation bar)."""

    def __init__(self, tick: Callable[[int], object], networks: int) -> None:
        self.tick, self.networks = tick, networks

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One epoch of every network of this call."""
        self.tick(self.networks)


def evaluate_set(
    factory: Callable[[], nn.Module],
    images: Tensor,
    labels: Tensor,
    test: tuple[Tensor, Tensor],
    *,
    model: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int,
    protocol: EvalProtocol,
    seed: int = 0,
    accelerator: str = "auto",
    on_epoch: Callable[[int], object] | None = None,
    repeat_ids: Sequence[int] | None = None,
) -> EvalResult:
    """Train ``protocol.repeats`` fresh networks on (images, labels) and test them on the real test set.

    Args:
        factory: builds one network of architecture ``model``.
        images: [N, C, H, W] pixel-space training images: float, or uint8 (0..255) as a dataset stores them,
            which the evaluator keeps 8-bit and converts a batch at a time (a whole training set's memory).
        labels: [N] their labels.
        test: real test images (uint8 [M, C, H, W]) and labels.
        model: architecture name (for the report).
        mean: per-channel normalisation mean of the dataset.
        std: per-channel normalisation std.
        num_classes: K.
        protocol: epochs, optimiser, augmentation and repeats.
        seed: the evaluation's seed; each repeat's initialisation and draws are derived from it.
        accelerator: Lightning accelerator; with ``protocol.compile`` it decides whether training runs as
            captured epochs ("graphs"), their eager twin ("eager-static") or one step per batch ("off"),
            as ``extra["compile"]`` reports.
        on_epoch: called after every epoch with the number of networks it trained (the repeats trained
            together): the progress of :class:`dream_pl.evaluation.progress.EvaluationBar`.
        repeat_ids: train only these repeats of the protocol (a process's share); each repeat trains as it
            would among all of them.
    """
    start = time.perf_counter()
    module = StackedClassifier(
        factory,
        images,
        labels,
        protocol=protocol,
        seed=seed,
        mean=mean,
        std=std,
        num_classes=num_classes,
        stacked=use_stacking(protocol.stacked, accelerator),
        device="cuda" if on_gpu(accelerator) else "cpu",
        repeat_ids=repeat_ids,
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*test), batch_size=protocol.test_batch, shuffle=False
    )
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=own_device(),
            max_epochs=protocol.epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            callbacks=[EpochTicks(on_epoch, len(repeat_ids or range(protocol.repeats)))] if on_epoch else [],
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(module)
        trainer.test(module, loader, verbose=False)
    return EvalResult(
        model=model,
        accuracies=module.accuracies(),
        seconds=time.perf_counter() - start,
        protocol=protocol.describe(),
        images=len(labels),
        extra={"stacked": module.stacked, "compile": module.formulation},
    )
