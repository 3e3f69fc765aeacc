"""What every command line shares: user errors said in one line with status 2, the rank, the output folder.

The entry points' front door (:mod:`dream_pl.launch`), the report, the dashboard and the work itself
(:mod:`dream_pl.workflow`, :mod:`dream_pl.runner`) all use these; they live here, below all of them, so
that only ``dream_pl.train`` and ``dream_pl.evaluate`` import the front door.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig

from dream_pl.config import ConfigError
from dream_pl.errors import UserError

T = TypeVar("T")
USER_ERRORS = (UserError, FileNotFoundError)  # FileNotFoundError: a path the user gave is not there
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # set by DDP launchers


def launched_rank_zero() -> bool:
    """Whether a launcher counts this process as rank 0 (or there is no launcher).

    Lightning's DDP re-runs the command once per extra process (``LOCAL_RANK`` > 0); torchrun and SLURM
    set ``RANK`` / ``SLURM_PROCID``. Only rank 0 checks, locks and keeps the history of the run folder.
    """
    return all(os.environ.get(key, "0") == "0" for key in RANK_VARIABLES)


def say_error(err: BaseException) -> None:
    """The one line a user error is reported with (no traceback: the message says what to do)."""
    print(f"error: {err}", file=sys.stderr)


def report_user_errors(fn: Callable[[], T]) -> T:
    """Run ``fn``; a user error prints one line (no traceback) and exits with status 2."""
    try:
        return fn()
    except USER_ERRORS as err:
        say_error(err)
        raise SystemExit(2) from None


def check_out_dir(path: Path, key: str = "out_dir") -> None:
    """``path`` must be a folder, or creatable, and writable; checked without leaving anything behind."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is a file; give a folder (it is created if missing)")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={path} cannot be created: {probe} is a file")
    try:
        Path(tempfile.mkdtemp(dir=probe, prefix=".dream-pl-probe-")).rmdir()
    except OSError as err:
        raise ConfigError(f"{key}={path} cannot be written ({probe}: {err.strerror})") from None


def output_dir(cfg: DictConfig) -> Path:
    """``cfg.out_dir`` if set, else Hydra's run directory (a job's own directory in a multirun); created."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("out_dir"):
        path = Path(cfg.out_dir)
    elif HydraConfig.initialized():
        path = Path(HydraConfig.get().runtime.output_dir)
    else:
        raise ConfigError("out_dir is not set and no Hydra run directory exists; pass out_dir=<dir>")
    check_out_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
