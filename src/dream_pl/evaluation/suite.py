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

from dream_pl.data import DatasetSpec, RealData, RealSet
from dream_pl.evaluation.progress import EvaluationBar
from dream_pl.evaluation.protocol import EvalProtocol, EvalResult, evaluate_set
from dream_pl.evaluation.selection import search_lr, selection_note
from dream_pl.evaluation.sets import baseline_set, held_out, validation_set
from dream_pl.models import network_factory
from dream_pl.schemas import LR_AUTO
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
    """``(images, labels, protocol[, repeat_ids]) -> EvalResult``: ``name`` tested on ``real``'s test set.

    ``test``: score on these images instead (the validation split of an lr search).
    """
    factory = network_for(cfg, real.spec, name)

    def run(
        images: Tensor,
        labels: Tensor,
        *,
        protocol: EvalProtocol,
        repeat_ids: list[int] | None = None,
        on_epoch: Callable[[int], object] | None = None,
        test: tuple[Tensor, Tensor] | None = None,
    ) -> EvalResult:
        return evaluate_set(
            factory,
            images,
            labels,
            (real.test_images, real.test_labels) if test is None else test,
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


def config_baseline(
    cfg: DictConfig, name: str, real: RealData, ipc: int, *, net: nn.Module | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`baseline_set` as the config asks: with ``evaluation.lr=auto``, kept off the validation split."""
    exclude = None
    if cfg.evaluation.lr == LR_AUTO:
        exclude = held_out(RealSet.from_data(real, "train"), cfg.evaluation.validation_per_class, cfg.seed)
    return baseline_set(name, real, ipc, seed=cfg.seed, net=net, exclude=exclude)


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

    A protocol without an lr (``evaluation.lr=auto``) first searches ``evaluation.lr_grid`` for each pair on
    the validation split (:mod:`dream_pl.evaluation.selection`; every process holding a repeat of the pair
    runs the same seeded search); the row records the chosen lr, the search and what it was chosen on.
    """
    ev = cfg.evaluation
    search = protocol.lr is None
    validation = validation_set(real, ev.validation_per_class, cfg.seed) if search else None
    models = list(ev.models if models is None else models)
    pairs = [(name, label) for name in models for label in sets]
    repeats = protocol.repeats
    shard = Shard.current(len(pairs) * repeats)
    evaluators = {name: set_evaluator(cfg, name, real) for name in models}
    mine: dict[int, list[int]] = {}
    for unit in shard.classes:
        mine.setdefault(unit // repeats, []).append(unit % repeats)
    parts = {}
    shown = bool(cfg.trainer.get("enable_progress_bar", True)) and shard.rank == 0
    searched = len(mine) * len(ev.lr_grid) * ev.lr_search_repeats if search else 0
    total = (sum(map(len, mine.values())) + searched) * protocol.epochs
    with EvaluationBar(total, enabled=shown) as bar:
        for i, ids in mine.items():
            name, label = pairs[i]
            images, labels = sets[label]
            chosen, note = protocol, None
            if search:
                bar.describe(f"{label}, lr search", name, ev.lr_search_repeats)
                lr, scores = search_lr(
                    evaluators[name],
                    images,
                    labels,
                    protocol,
                    grid=list(ev.lr_grid),
                    repeats=ev.lr_search_repeats,
                    validation=validation,
                    on_epoch=bar.advance,
                )
                chosen = replace(protocol, lr=lr)
                note = {"lr_search": scores, "selected": selection_note(lr, scores, ev.validation_per_class)}
            bar.describe(label, name, len(ids))
            result = evaluators[name](
                images,
                labels,
                protocol=chosen,
                repeat_ids=None if shard.world == 1 else ids,
                on_epoch=bar.advance,
            )
            if note:  # the protocol as configured ("lr auto"); the row's lr and note say what was chosen
                result = replace(result, protocol=protocol.describe())
            parts[i] = (ids, result, chosen.lr, note)
    merged = shard.merge({(i, shard.rank): part for i, part in parts.items()})
    rows = []
    for i in range(len(pairs)):
        shares = [part for (j, _), part in sorted(merged.items()) if j == i]
        accuracy = {r: a for ids, result, *_ in shares for r, a in zip(ids, result.accuracies, strict=True)}
        _, first, lr, note = shares[0]
        result = replace(
            first,
            accuracies=[accuracy[r] for r in range(repeats)],
            seconds=max(result.seconds for _, result, *_ in shares),
        )
        rows.append(
            {
                "set": pairs[i][1],
                **result.as_dict(),
                "epochs": protocol.epochs,
                "repeats": protocol.repeats,
                "lr": lr,
                **(note or {}),
            }
        )
    return rows
