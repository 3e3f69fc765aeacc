"""Evaluation from a config: the protocol, the networks, and every (architecture, set) pair of a run.

Both entry points (``dream_pl.train`` after distilling, ``dream_pl.evaluate`` on a saved set) and the
periodic evaluation during distillation go through these functions, so a set is evaluated one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from dream_pl.data import DatasetSpec, RealData
from dream_pl.evaluation.progress import EvaluationBar
from dream_pl.evaluation.protocol import EvalProtocol, EvalResult, evaluate_set
from dream_pl.models import network_factory
from dream_pl.sharding import Shard


def network_for(cfg: DictConfig, spec: DatasetSpec, name: str | None = None) -> Callable[[], nn.Module]:
    """Builder of architecture ``name`` (default: the ``model`` group's) for the dataset's shape.

    The ``model`` group's knobs (width, depth, norm, ...) apply when it names the same architecture;
    another architecture (``evaluation.models``) is built with its own defaults.
    """
    shape = {"channels": spec.channels, "num_classes": spec.num_classes, "size": spec.size}
    if name is None or name == cfg.model.name:
        return instantiate(cfg.model, **shape)
    return network_factory(name, **shape)


def set_evaluator(cfg: DictConfig, name: str, real: RealData) -> Callable[..., EvalResult]:
    """``(images, labels, protocol[, repeat_ids]) -> EvalResult``: ``name`` tested on ``real``'s test set."""
    factory = network_for(cfg, real.spec, name)

    def run(
        images: Tensor,
        labels: Tensor,
        *,
        protocol: EvalProtocol,
        repeat_ids: list[int] | None = None,
        on_epoch: Callable[[int], object] | None = None,
    ) -> EvalResult:
        return evaluate_set(
            factory,
            images,
            labels,
            (real.test_images, real.test_labels),
            model=name,
            mean=real.spec.mean,
            std=real.spec.std,
            num_classes=real.spec.num_classes,
            protocol=protocol,
            seed=cfg.seed,
            accelerator=cfg.trainer.accelerator,
            repeat_ids=repeat_ids,
            on_epoch=on_epoch,
        )

    return run


def evaluate_sets(
    cfg: DictConfig,
    real: RealData,
    sets: dict[str, tuple[Tensor, Tensor]],
    protocol: EvalProtocol,
    *,
    models: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Every (architecture, labelled set) pair under ``protocol``.

    The architectures are ``models``, default ``evaluation.models``.
    A row is the :class:`EvalResult` of a pair with its set's label and the protocol's epochs and repeats.

    In a run sharded over processes (``trainer=ddp``) the (pair, repeat) units are dealt out like classes,
    each process stacks the repeats it got of a pair, and the rows are gathered on every process: the same
    rows, in the same order, with the same per-repeat accuracies as one process computes (every repeat
    trains on streams of its own). ``seconds`` of a row is then its slowest process's. One bar
    (:class:`EvaluationBar`, rank 0's share) shows the sets x repeats x epochs as they train.
    """
    models = list(cfg.evaluation.models if models is None else models)
    pairs = [(name, label) for name in models for label in sets]
    repeats = protocol.repeats
    shard = Shard.current(len(pairs) * repeats)
    evaluators = {name: set_evaluator(cfg, name, real) for name in models}
    mine: dict[int, list[int]] = {}
    for unit in shard.classes:
        mine.setdefault(unit // repeats, []).append(unit % repeats)
    parts = {}
    shown = bool(cfg.trainer.get("enable_progress_bar", True)) and shard.rank == 0
    with EvaluationBar(sum(map(len, mine.values())) * protocol.epochs, enabled=shown) as bar:
        for i, ids in mine.items():
            name, label = pairs[i]
            images, labels = sets[label]
            bar.describe(label, name, len(ids))
            result = evaluators[name](
                images,
                labels,
                protocol=protocol,
                repeat_ids=None if shard.world == 1 else ids,
                on_epoch=bar.advance,
            )
            parts[i] = (ids, result)
    merged = shard.merge({(i, shard.rank): part for i, part in parts.items()})
    rows = []
    for i in range(len(pairs)):
        shares = [part for (j, _), part in sorted(merged.items()) if j == i]
        accuracy = dict(pair for ids, result in shares for pair in zip(ids, result.accuracies, strict=True))
        first = shares[0][1]
        result = replace(
            first,
            accuracies=[accuracy[r] for r in range(repeats)],
            seconds=max(result.seconds for _, result in shares),
        )
        rows.append(
            {"set": pairs[i][1], **result.as_dict(), "epochs": protocol.epochs, "repeats": protocol.repeats}
        )
    return rows
