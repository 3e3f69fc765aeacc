"""What the entry points do once their input is checked: distil (then evaluate), or evaluate a saved set.

``dream_pl.train`` and ``dream_pl.evaluate`` are thin command lines; the work is here, callable from Python
with a composed config (``train(cfg)``, ``evaluate(cfg)``). Every call checks its input first (the same
checks as the command line's pre-check), holds its run folder's lock, and writes only into that folder.
"""

from __future__ import annotations

import inspect
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor

from dream_pl.callbacks import DiagnosticsHistograms, DistillProgressBar, PeriodicEvaluation, SyntheticExport
from dream_pl.checkpoints import check_resume
from dream_pl.cli import launched_rank_zero, output_dir
from dream_pl.config import (
    check_baseline_ipc,
    check_keys,
    from_block,
    protocol_from,
    sharded_trainer,
    validate,
    validate_against_data,
    validate_eval,
)
from dream_pl.data import DatasetSpec, RealData, RealSet, load_dataset
from dream_pl.distill import DistillModule
from dream_pl.engine import NonFiniteLossError
from dream_pl.evaluation.formats import read_set
from dream_pl.evaluation.references import whole_references
from dream_pl.evaluation.scores import score_rows
from dream_pl.evaluation.sets import (
    BASELINES,
    DISTILLED,
    INITIALISATION,
    baseline_label,
    load_set,
)
from dream_pl.evaluation.suite import config_baseline, evaluate_sets, network_for, set_evaluator
from dream_pl.evaluation.tables import eval_metrics, write_report
from dream_pl.quiet import quiet_lightning
from dream_pl.runlock import RunLock
from dream_pl.runner import make_loggers, plain_config
from dream_pl.samplers import Sampler
from dream_pl.schemas import DistillConfig
from dream_pl.sharding import release

log = logging.getLogger("dream_pl.workflow")


def build_sampler(node: DictConfig) -> Sampler:
    """The ``sampler`` block's sampler; its ``interval`` is the engine's (when to re-select)."""
    knobs = OmegaConf.to_container(node, resolve=True)
    knobs.pop("interval", None)
    return instantiate(knobs)


def engine_parts(cfg: DictConfig, real: RealSet, spec: DatasetSpec) -> dict[str, Any]:
    """The engine's parts, instantiated from their config groups: ``Engine(**engine_parts(...))``."""
    return {
        "real": real,
        "net_factory": network_for(cfg, spec),
        "matcher": instantiate(cfg.matcher),
        "sampler": build_sampler(cfg.sampler),
        "initializer": instantiate(cfg.init),
        "cfg": from_block(DistillConfig, cfg.distill, "distill", ipc=cfg.ipc, seed=cfg.seed),
        "interval": cfg.sampler.get("interval"),
        "diagnostics_every": cfg.diagnostics_every,
    }


def build_module(cfg: DictConfig, real: RealSet, spec: DatasetSpec) -> DistillModule:
    """The Lightning module around the engine a run of ``cfg`` distils with."""
    return DistillModule(
        engine_parts(cfg, real, spec), dataset=cfg.dataset.name, run_config=plain_config(cfg)
    )


def checkpoint_every(cfg: DictConfig) -> int:
    """Inner steps between checkpoints (and ``synthetic.pt`` exports)."""
    return int(cfg.distill.save_every * cfg.distill.inner_loops)


def distill_callbacks(cfg: DictConfig, out: Path, data: RealData) -> list[pl.Callback]:
    """Progress, checkpoints, exports, diagnostics histograms, accuracy curves.

    Besides ``last.ckpt``, the newest ``keep_checkpoints`` periodic checkpoints (``step-<n>.ckpt``) stay:
    a run whose newest checkpoint is damaged goes back to one of them.
    """
    every = checkpoint_every(cfg)
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=out / "checkpoints",
            filename="step-{step}",
            auto_insert_metric_name=False,
            enable_version_counter=False,  # one run per folder: a moved folder overwrites last.ckpt
            every_n_train_steps=every,
            save_last=True,
            save_top_k=cfg.keep_checkpoints,
            monitor="step",
            mode="max",
        ),
        SyntheticExport(out, every),
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(DistillProgressBar(inner_loops=cfg.distill.inner_loops, iterations=cfg.iterations))
    if cfg.diagnostics_every:
        callbacks.append(DiagnosticsHistograms())
    if cfg.eval_every:
        name = cfg.evaluation.models[0]
        callbacks.append(
            PeriodicEvaluation(
                cfg.eval_every * cfg.distill.inner_loops,
                set_evaluator(cfg, name, data),
                protocol_from(cfg.evaluation, periodic=True),
                name,
                inner_loops=cfg.distill.inner_loops,
            )
        )
    return callbacks


def checkpoint_state(out: Path, every: int) -> str:
    """Whether a run that stopped has a checkpoint to resume from (said with every stop on a bad loss)."""
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        return f"its last checkpoint {last} is intact: fix the setting and rerun on out_dir={out} to resume"
    return f"no checkpoint was written yet (the first is due at step {every})"


def check_trainer_keys(cfg: DictConfig) -> None:
    """Every key of the ``trainer`` block is an argument of Lightning's ``Trainer`` (or matmul_precision).

    Checked in the job before any data is read: Lightning is imported here anyway, not in the pre-check.
    """
    accepted = inspect.signature(pl.Trainer.__init__).parameters
    check_keys("trainer", cfg.trainer, [*accepted, "_target_", "matmul_precision"])


def build_trainer(cfg: DictConfig, **kwargs: Any) -> pl.Trainer:
    """The ``trainer`` block's Trainer; its ``matmul_precision`` is torch's, set for the whole process."""
    knobs = OmegaConf.to_container(cfg.trainer, resolve=True)
    torch.set_float32_matmul_precision(knobs.pop("matmul_precision", "highest"))
    return instantiate(knobs, **kwargs)


def resume_note(resume: Path | None, cfg: DictConfig) -> str:
    """How the run starts: afresh, or from which checkpoint."""
    total = cfg.iterations * cfg.distill.inner_loops
    return f"resuming from {resume} ({total} steps in all)" if resume else f"a new run of {total} steps"


def distill(cfg: DictConfig, *, checked: bool = False) -> tuple[DistillModule, pl.Trainer, Path, RealData]:
    """Check (unless ``checked``: the caller did), load data, build and fit.

    Returns the module, its trainer, the run directory and the data. The caller holds the run folder's
    lock (:func:`train`).
    """
    if not checked:
        validate(cfg)
    check_trainer_keys(cfg)
    out = output_dir(cfg)
    resume = check_resume(cfg, out)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_dataset(cfg.dataset.name, cfg.data_dir, **cfg.dataset.get("options", {}))
    real = RealSet.from_data(data, "train")
    validate_against_data(cfg, real.class_sizes)
    module = build_module(cfg, real, data.spec)
    try:
        with quiet_lightning():  # Lightning's device banner and tips; the run says what matters itself
            trainer = build_trainer(
                cfg,
                max_steps=cfg.iterations * cfg.distill.inner_loops,
                max_epochs=-1,
                callbacks=distill_callbacks(cfg, out, data),
                logger=make_loggers(cfg, out, job_type="distill") or False,
                default_root_dir=str(out),
            )
            log.info("distilling on %s; %s", trainer.strategy.root_device, resume_note(resume, cfg))
            trainer.fit(module, ckpt_path=None if resume is None else str(resume))
    except NonFiniteLossError as err:
        raise NonFiniteLossError(f"{err}; {checkpoint_state(out, checkpoint_every(cfg))}") from None
    return module, trainer, out, data


def evaluate_run(
    cfg: DictConfig,
    module: DistillModule,
    out: Path,
    data: RealData,
    *,
    write: bool = True,
    distill_seconds: float | None = None,
) -> dict[str, float]:
    """The evaluator on the distilled set, beside its initialisation and random real images of equal size.

    ``write``: the table, ``eval.json`` and ``eval.csv`` (rank 0 of a sharded run; the others only
    contribute rows). ``distill_seconds``: the distillation's wall-clock, kept in every row.
    """
    final = module.export()
    sets = {DISTILLED: (final.images, final.labels)}
    if cfg.evaluation.baseline:
        init = out / "synthetic_init.pt"
        if init.is_file():
            initial = load_set(init, data)
            sets[INITIALISATION] = (initial.images, initial.labels)
        sets[baseline_label("random", cfg.ipc)] = config_baseline(cfg, "random", data, cfg.ipc)
    start = time.perf_counter()
    rows = evaluate_sets(cfg, data, sets, protocol_from(cfg.evaluation))
    timing = {"distill_seconds": distill_seconds, "eval_seconds": time.perf_counter() - start}
    rows = report_rows(cfg, data, rows, dict.fromkeys(sets, cfg.ipc), timing, write=write)
    if write:
        write_report(rows, out)
    return eval_metrics(rows)


def report_rows(
    cfg: DictConfig,
    real: RealData,
    rows: list[dict[str, Any]],
    ipcs: dict[str, int | None],
    timing: dict[str, float | None],
    *,
    write: bool,
) -> list[dict[str, Any]]:
    """The rows as eval.json keeps them, with their IPC, dataset, wall-clock, references and scores.

    Each row gets its set's stored images per class (``ipcs``), the dataset and the run's ``timing``
    (``distill_seconds``, ``eval_seconds``; None: not part of this run). The whole-set reference of each
    architecture (cached, or trained now with ``evaluation.whole=true``) is a row of its own, and every other
    set is scored against it and random real images. The time a reference trains now is its row's
    ``seconds``, not ``eval_seconds``: it is paid once per dataset and architecture, not by the set.
    """
    run = {"dataset": cfg.dataset.name, **{k: v for k, v in timing.items() if v is not None}}
    described = [{**r, "ipc": ipcs.get(r["set"]), **run} for r in rows]
    whole = protocol_from(cfg.evaluation, whole=True)
    references = [{**r, **run} for r in whole_references(cfg, real, whole, write=write)]
    return score_rows([*described, *references])


def train(cfg: DictConfig, *, checked: bool = False) -> dict[str, Any]:
    """Distil, then (unless ``evaluation.enabled=false``) evaluate; returns the run's metrics.

    ``checked``: the command line's pre-check already validated this job's config (once per job). The run
    folder is locked for the whole run: a second run on the same ``out_dir`` refuses at once.
    """
    if not checked:
        validate(cfg)
    with RunLock(output_dir(cfg)) if launched_rank_zero() else nullcontext():
        start = time.perf_counter()
        module, trainer, out, data = distill(cfg, checked=True)
        seconds = time.perf_counter() - start  # this attempt's: a resumed run's earlier ones are not counted
        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.evaluation.enabled:  # every process of a sharded run evaluates its share of the sets
            scores = evaluate_run(
                cfg, module, out, data, write=trainer.is_global_zero, distill_seconds=seconds
            )
            for logger in trainer.loggers:
                logger.log_metrics(scores, step=trainer.global_step)
                logger.save()
            metrics.update(scores)
        release()
    metrics["synthetic_path"] = str(out / "synthetic.pt")
    log.info("run directory: %s", out)
    return metrics


def evaluation_sets(cfg: DictConfig, real: RealData) -> dict[str, tuple[Tensor, Tensor]]:
    """The sets ``dream_pl.evaluate`` trains on: a baseline, or a saved set beside random real images.

    A saved set is read in its ``format`` (this project's ``synthetic.pt``, or another codebase's file:
    :mod:`dream_pl.evaluation.formats`); the random real images match its stored images per class.
    """
    return evaluation_inputs(cfg, real)[0]


def evaluation_inputs(
    cfg: DictConfig, real: RealData
) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, int | None]]:
    """:func:`evaluation_sets`, and each set's stored images per class (None for the whole real set)."""
    target = str(cfg.synthetic)
    if target in BASELINES:
        check_baseline_ipc(cfg, min(RealSet.from_data(real, "train").class_sizes))
        net = network_for(cfg, real.spec)()
        label = baseline_label(target, cfg.ipc)
        images = config_baseline(cfg, target, real, cfg.ipc, net=net)
        return {label: images}, {label: None if target == "whole" else cfg.ipc}
    synthetic = read_set(
        target,
        cfg.format,
        real,
        factor=cfg.factor,
        experiment_index=cfg.experiment_index,
        zca=cfg.zca,
    )
    sets = {DISTILLED: (synthetic.images, synthetic.labels)}
    ipcs: dict[str, int | None] = {DISTILLED: synthetic.ipc}
    if cfg.evaluation.baseline:
        label = baseline_label("random", synthetic.ipc)
        sets[label] = config_baseline(cfg, "random", real, synthetic.ipc)
        ipcs[label] = synthetic.ipc
    return sets, ipcs


def start_processes(cfg: DictConfig) -> None:
    """``trainer=ddp``: Lightning Fabric starts the processes (and their group) evaluations are dealt over.

    Its launcher re-runs the command once per extra process, as the Trainer's does for ``dream_pl.train``;
    :func:`evaluate_sets` then deals the (architecture, set) pairs out and gathers the rows.
    """
    if not sharded_trainer(cfg):
        return
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy

    trainer, strategy = cfg.trainer, cfg.trainer.strategy
    ddp = DDPStrategy(
        process_group_backend=strategy.process_group_backend, timeout=instantiate(strategy.timeout)
    )
    Fabric(
        accelerator=trainer.accelerator, devices=trainer.devices, num_nodes=trainer.num_nodes, strategy=ddp
    ).launch()


def evaluate(cfg: DictConfig, *, checked: bool = False) -> list[dict[str, Any]]:
    """Resolve the set(s), evaluate them, write ``eval.json`` and ``eval.csv`` (the folder locked meanwhile).

    ``checked``: the command line's pre-check already validated this job's config. With ``trainer=ddp``
    the evaluations are dealt out over the processes; rank 0 locks and writes.
    """
    if not checked:
        validate_eval(cfg)
    check_trainer_keys(cfg)
    out = output_dir(cfg)
    first = launched_rank_zero()
    with RunLock(out) if first else nullcontext():
        start_processes(cfg)
        torch.set_float32_matmul_precision(cfg.trainer.get("matmul_precision", "highest"))
        pl.seed_everything(cfg.seed, verbose=False)
        real = load_dataset(cfg.dataset.name, cfg.data_dir, **cfg.dataset.get("options", {}))
        sets, ipcs = evaluation_inputs(cfg, real)
        start = time.perf_counter()
        rows = evaluate_sets(cfg, real, sets, protocol_from(cfg.evaluation))
        timing = {"eval_seconds": time.perf_counter() - start}
        rows = report_rows(cfg, real, rows, ipcs, timing, write=first)
        if first:
            write_report(rows, out)
            for logger in make_loggers(cfg, out, job_type="eval"):
                logger.log_metrics(eval_metrics(rows), step=0)
                logger.finalize("success")
        release()
    return rows
