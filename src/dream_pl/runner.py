"""Shared plumbing of the runs: loggers, the config and commit they log, W&B clean-up."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from dream_pl.cli import launched_rank_zero

log = logging.getLogger("dream_pl.runner")


def git_commit() -> str:
    """The source tree's commit (``unknown`` outside a git checkout), logged with every run."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def wandb_offline() -> bool:
    """True when no W&B credentials are configured: such runs are written offline (``wandb sync`` later)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"] in ("offline", "dryrun")
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return not (netrc.is_file() and "api.wandb.ai" in netrc.read_text())


def sweep_group(cfg: DictConfig) -> str:
    """Runs of one multirun share a group (the sweep directory's name); single runs use the task name."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"{cfg.task_name}-{Path(HydraConfig.get().sweep.dir).name}"
    return str(cfg.task_name)


def make_loggers(cfg: DictConfig, save_dir: Path, job_type: str) -> list[Logger]:
    """Instantiate every logger of the ``logger`` group under ``save_dir`` and log config, commit and seed.

    W&B runs get ``job_type`` (distill / eval), the sweep's group, offline mode when no API key is set,
    and summary definitions so dashboards chart final accuracy against N, n, I_int and IPC directly.
    """
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        extra: dict[str, Any] = {"save_dir": str(save_dir)}
        if node["_target_"].endswith("WandbLogger"):
            extra |= {"job_type": job_type, "group": sweep_group(cfg), "offline": wandb_offline()}
        loggers.append(instantiate(node, **extra))
    for logger in loggers:
        if isinstance(logger, CSVLogger) and launched_rank_zero():
            kept = keep_metrics_history(Path(logger.log_dir))
            if kept is not None:
                log.info("previous attempt's metrics kept as %s", kept)
            with warnings.catch_warnings():  # "previous log files will be deleted": moot, they were moved
                warnings.filterwarnings(
                    "ignore", message=r"Experiment logs directory .* exists and is not empty"
                )
                _ = logger.experiment  # the CSV writer, created now
        logger.log_hyperparams({**plain_config(cfg), "git_commit": git_commit(), "seed": cfg.seed})
        if isinstance(logger, WandbLogger):
            define_wandb_metrics(logger)
    return loggers


def keep_metrics_history(log_dir: Path) -> Path | None:
    """Move a previous attempt's ``metrics.csv`` to ``metrics.<k>.csv`` (k = 1, 2, ... in attempt order).

    Lightning's CSV logger deletes an existing ``metrics.csv`` when a run resumes into its folder; the run
    folder is append-only history instead, and ``report.read_metrics`` reads every attempt.
    """
    current = log_dir / "metrics.csv"
    if not current.is_file():
        return None
    k = 1
    while (log_dir / f"metrics.{k}.csv").exists():
        k += 1
    return current.rename(log_dir / f"metrics.{k}.csv")


def define_wandb_metrics(logger: WandbLogger) -> None:
    """Summaries a dashboard reads: final accuracies, the best matching loss, the last iteration."""
    run = logger.experiment
    run.define_metric("iteration")
    run.define_metric("eval/*", step_metric="iteration", summary="last")
    run.define_metric("distill/loss", summary="min")
    run.define_metric("distill/outer", summary="max")
    run.define_metric("distill/time/*", summary="mean")


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (stored in artifacts and logged)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]


def close_wandb() -> None:
    """Finish any open W&B run, so a failed job does not leave it open for the next job of a multirun."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if sys.exc_info()[0] else 0)
