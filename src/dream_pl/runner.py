"""Shared plumbing of the Hydra entry points: one-line errors, output directories, loggers."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from dream_pl.config import ConfigError
from dream_pl.data import DatasetNotFoundError
from dream_pl.evaluation.sets import SetMismatchError

T = TypeVar("T")
USER_ERRORS = (ConfigError, DatasetNotFoundError, FileNotFoundError, SetMismatchError)


def report_user_errors(fn: Callable[[], T]) -> T:
    """Run ``fn``; a user error prints one line (no traceback) and exits with status 2."""
    try:
        return fn()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def output_dir(cfg: DictConfig) -> Path:
    """``cfg.out_dir`` if set, else Hydra's run directory (a job's own directory in a multirun)."""
    if cfg.get("out_dir"):
        path = Path(cfg.out_dir)
    elif HydraConfig.initialized():
        path = Path(HydraConfig.get().runtime.output_dir)
    else:
        raise ConfigError("out_dir is not set and no Hydra run directory exists; pass out_dir=<dir>")
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_loggers(cfg: DictConfig, save_dir: Path) -> list[Logger]:
    """Instantiate every logger of the ``logger`` group with its files under ``save_dir``."""
    loggers = [instantiate(node, save_dir=str(save_dir)) for node in (cfg.get("logger") or {}).values()]
    for logger in loggers:
        logger.log_hyperparams(plain_config(cfg))
    return loggers


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (stored in artifacts and logged)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
