"""Distillation entry point: ``python -m dream_pl.train dataset=cifar100 ipc=10 sampler=dream``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from dream_pl.callbacks import ClusteringCallback, DiagnosticsCallback, PeriodicEvaluation, SyntheticExport
from dream_pl.config import check_overrides, from_block, sampler_selects, validate, validate_against_data
from dream_pl.data import DatasetSpec, RealData, RealSet, load_dataset
from dream_pl.distill import DistillConfig, DistillModule
from dream_pl.evaluation.sets import DISTILLED, INITIALISATION, baseline_label, baseline_set, load_set
from dream_pl.evaluation.suite import evaluate_sets, network_for, protocol_from, set_evaluator
from dream_pl.evaluation.tables import eval_metrics, write_report
from dream_pl.quiet import quiet_lightning
from dream_pl.runlock import RunLock
from dream_pl.runner import close_wandb, make_loggers, output_dir, plain_config, report_user_errors
from dream_pl.samplers import Sampler

log = logging.getLogger("dream_pl.train")  # not __main__ under `python -m`


def build_sampler(node: DictConfig) -> Sampler:
    """The ``sampler`` block's sampler; its ``interval`` belongs to the clustering callback, not to it."""
    knobs = OmegaConf.to_container(node, resolve=True)
    knobs.pop("interval", None)
    return instantiate(knobs)


def build_module(cfg: DictConfig, real: RealSet, spec: DatasetSpec) -> DistillModule:
    """Instantiate the injected parts from their config groups and the loop itself."""
    return DistillModule(
        real=real,
        net_factory=network_for(cfg, spec),
        matcher=instantiate(cfg.matcher),
        sampler=build_sampler(cfg.sampler),
        initializer=instantiate(cfg.init),
        cfg=from_block(DistillConfig, cfg.distill, "distill", ipc=cfg.ipc, seed=cfg.seed),
        dataset=cfg.dataset.name,
    )


def distill_callbacks(cfg: DictConfig, out: Path, data: RealData) -> list[pl.Callback]:
    """Checkpoints, exports, the clustering schedule (every selecting sampler), diagnostics, curves."""
    every = cfg.distill.save_every * cfg.distill.inner_loops
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=out / "checkpoints", every_n_train_steps=every, save_last=True, save_top_k=0),
        SyntheticExport(out, every, config=plain_config(cfg)),
    ]
    if sampler_selects(cfg.sampler):
        callbacks.append(ClusteringCallback(cfg.sampler.interval, cfg.distill.inner_loops))
    if cfg.diagnostics_every:
        callbacks.append(DiagnosticsCallback(cfg.diagnostics_every))
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


def resume_path(cfg: DictConfig, out: Path) -> str | None:
    """``resume=<ckpt>`` if given, else the run directory's ``last.ckpt`` if a run stopped there."""
    if cfg.get("resume"):
        if not Path(cfg.resume).is_file():
            raise FileNotFoundError(f"resume={cfg.resume} does not exist")
        return str(cfg.resume)
    last = out / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def distill(cfg: DictConfig) -> tuple[DistillModule, pl.Trainer, Path, RealData]:
    """Validate, load data, build and fit; returns the module, its trainer, the run directory, the data."""
    validate(cfg)
    out = output_dir(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_dataset(cfg.dataset.name, cfg.data_dir, **cfg.dataset.get("options", {}))
    real = RealSet.from_data(data, "train")
    validate_against_data(cfg, real.class_sizes)
    module = build_module(cfg, real, data.spec)
    trainer = instantiate(
        cfg.trainer,
        max_steps=cfg.iterations * cfg.distill.inner_loops,
        max_epochs=-1,
        callbacks=distill_callbacks(cfg, out, data),
        logger=make_loggers(cfg, out, job_type="distill") or False,
        default_root_dir=str(out),
    )
    with quiet_lightning(banners=False):
        trainer.fit(module, ckpt_path=resume_path(cfg, out))
    return module, trainer, out, data


def evaluate_run(cfg: DictConfig, module: DistillModule, out: Path, data: RealData) -> dict[str, float]:
    """The evaluator on the distilled set, beside its initialisation and random real images of equal size."""
    final = module.export()
    sets = {DISTILLED: (final.images, final.labels)}
    if cfg.evaluation.baseline:
        init = out / "synthetic_init.pt"
        if init.is_file():
            initial = load_set(init, data)
            sets[INITIALISATION] = (initial.images, initial.labels)
        sets[baseline_label("random", cfg.ipc)] = baseline_set("random", data, cfg.ipc, seed=cfg.seed)
    rows = evaluate_sets(cfg, data, sets)
    write_report(rows, out)
    return eval_metrics(rows)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Distil, then (unless ``evaluation.enabled=false``) evaluate; returns the run's metrics.

    The run folder is locked for the whole run: a second run on the same ``out_dir`` refuses at once.
    """
    validate(cfg)
    with RunLock(output_dir(cfg)):
        module, trainer, out, data = distill(cfg)
        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.evaluation.enabled:
            scores = evaluate_run(cfg, module, out, data)
            for logger in trainer.loggers:
                logger.log_metrics(scores, step=trainer.global_step)
                logger.save()
            metrics.update(scores)
    metrics["synthetic_path"] = str(out / "synthetic.pt")
    log.info("run directory: %s", out)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        metrics = report_user_errors(lambda: train(cfg))
    finally:
        close_wandb()
    value = metrics.get(cfg.get("optimized_metric", ""), None)
    return None if value is None else float(value)


def main() -> None:
    """Console entry: reject unknown group options in one line, then hand over to Hydra."""
    report_user_errors(lambda: check_overrides(sys.argv[1:]))
    _hydra_main()


if __name__ == "__main__":
    main()
