"""The command line's front door: bad input is refused in seconds, before Lightning loads or a folder appears.

``python -m dream_pl.train`` / ``dream_pl.evaluate`` compose every job's config as Hydra will (its compose
API; a multirun's sweep expanded as Hydra's basic sweeper does), run the entry point's checks on each
(values, the run folder, the checkpoint to resume from), and only then hand over to ``@hydra.main``. A
rejected call prints one line, exits with status 2 and leaves nothing on disk; a job that fails after
Hydra made its folder removes that folder again if nothing but Hydra's own files landed in it.

With ``out_dir`` set, Hydra's run folder *is* ``out_dir``: its ``.hydra/`` config and log sit beside the
checkpoints and results they describe (an earlier attempt's ``.hydra/`` is kept as ``.hydra.<k>/``).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

from dream_pl.checkpoints import check_resume
from dream_pl.config import CONF_DIR, ConfigError, check_overrides, validate, validate_eval
from dream_pl.errors import UserError
from dream_pl.runlock import LOCK_NAME, RunLock

T = TypeVar("T")
USER_ERRORS = (UserError, FileNotFoundError)  # FileNotFoundError: a path the user gave is not there
HYDRA_FLAGS = ("-m", "--multirun")  # the only flags the pre-check understands; others go to Hydra alone
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # set by DDP launchers
Preflight = Callable[[DictConfig, bool], Path | None]  # (job's config, multirun): its run folder if known
_EXISTING: set[Path] = set()  # run folders that existed before this call: never removed on failure


def launched_rank_zero() -> bool:
    """Whether a launcher counts this process as rank 0 (or there is no launcher).

    Lightning's DDP re-runs the command once per extra process (``LOCAL_RANK`` > 0); torchrun and SLURM
    set ``RANK`` / ``SLURM_PROCID``. Only rank 0 checks, locks and keeps the history of the run folder.
    """
    return all(os.environ.get(key, "0") == "0" for key in RANK_VARIABLES)


def report_user_errors(fn: Callable[[], T]) -> T:
    """Run ``fn``; a user error prints one line (no traceback) and exits with status 2."""
    try:
        return fn()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
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


def check_run_folder(cfg: DictConfig, multirun: bool) -> Path | None:
    """Where the job writes: ``out_dir`` (writable, not held by a live run) or Hydra's folder (writable)."""
    if not cfg.get("out_dir"):
        if "hydra" in cfg:
            key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
            check_out_dir(Path(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir), key)
        return None
    out = Path(cfg.out_dir)
    check_out_dir(out)
    if out.is_dir():
        RunLock(out).check()
    return out


def preflight_train(cfg: DictConfig, multirun: bool = False) -> Path | None:
    """Everything ``dream_pl.train`` can refuse before work: values, run folder, the checkpoint to resume."""
    validate(cfg)
    out = check_run_folder(cfg, multirun)
    if out is not None and out.is_dir():
        check_resume(cfg, out)
    return out


def preflight_evaluate(cfg: DictConfig, multirun: bool = False) -> Path | None:
    """Everything ``dream_pl.evaluate`` can refuse before work: values, output folder, the set's file."""
    from dream_pl.evaluation.sets import BASELINES
    from dream_pl.synthetic import load_synthetic

    validate_eval(cfg)
    if str(cfg.synthetic) not in BASELINES:
        load_synthetic(cfg.synthetic)
    return check_run_folder(cfg, multirun)


def job_overrides(argv: list[str]) -> tuple[list[list[str]], bool] | None:
    """Every job's overrides (a sweep expanded) and whether it is a multirun; None: leave it to Hydra.

    Hydra's own options (``--cfg``, ``--help``, ``-cn`` ...) and its ``hydra.`` overrides are Hydra's
    business; a call using the former is not pre-checked (each job still checks itself).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = any(arg in HYDRA_FLAGS for arg in argv)
    args = [arg for arg in argv if arg not in HYDRA_FLAGS]
    if any(arg.startswith("-") for arg in args):
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception as err:  # Hydra's grammar errors: reported by the pre-check in one line
        raise ConfigError(str(err).splitlines()[0]) from None
    choices = []
    for override in parsed:
        if override.get_key_element().lstrip("+~").startswith("hydra"):
            continue
        if multirun and override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)], multirun


def compose_job(config_name: str, overrides: list[str]) -> DictConfig:
    """The config Hydra will give the job, composed without running it (no folder, no logging set-up)."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=config_name):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    except Exception as err:  # Hydra's several-line reports: said in one line
        message = str(err).strip()
        unknown = re.match(r"Could not override '(.+)'", message)
        if unknown:
            raise unknown_key(config_name, overrides, unknown.group(1)) from None
        raise ConfigError(message.splitlines()[0]) from None


def unknown_key(config_name: str, overrides: list[str], key: str) -> ConfigError:
    """``key=value`` for a key the config lacks: name it and its block's keys (not Hydra's ``+`` hint)."""
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    parent = key.rpartition(".")[0]
    node = compose_job(config_name, rest)
    block = OmegaConf.select(node, parent) if parent else node
    where = f"the {parent} block's keys" if parent else "top-level keys"
    allowed = ", ".join(sorted(str(k) for k in block)) if OmegaConf.is_dict(block) else "none"
    return ConfigError(f"unknown key {key}; {where}: {allowed}")


def preflight_all(config_name: str, argv: list[str], preflight: Preflight) -> Path | None:
    """Check every job; returns the single run's folder when ``out_dir`` fixes it."""
    check_overrides(argv)
    planned = job_overrides(argv)
    if planned is None:
        return None
    jobs, multirun = planned
    folders = [preflight(compose_job(config_name, job), multirun) for job in jobs]
    fixed = [f for f in folders if f is not None]
    if multirun and len(set(fixed)) < len(fixed):
        raise ConfigError(
            f"out_dir={fixed[0]} is shared by {len(fixed)} jobs of this multirun; leave out_dir unset "
            "(each job gets its own folder under hydra.sweep.dir) or sweep it"
        )
    return None if multirun or not fixed else fixed[0]


def keep_hydra_history(folder: Path) -> None:
    """Move an earlier attempt's ``.hydra/`` to ``.hydra.<k>/`` before Hydra writes this attempt's."""
    current = folder / ".hydra"
    if current.is_dir():
        k = 1
        while (folder / f".hydra.{k}").exists():
            k += 1
        current.rename(folder / f".hydra.{k}")


def _hydra_override_value(path: Path) -> str:
    """``path`` quoted for Hydra's override grammar (spaces, commas, quotes survive)."""
    escaped = str(path).replace("'", "\\'")
    return f"'{escaped}'"


def discard_if_empty(folder: Path, up_to: Path | None = None, job_log: str = "") -> None:
    """Remove a run folder this call created and left with only Hydra's config and ``job_log`` in it.

    Its parents up to ``up_to`` (Hydra's log folder) go too when that leaves them empty. A folder that
    existed before the call (an ``out_dir`` the user made) is never removed.
    """
    if not folder.is_dir() or folder.resolve() in _EXISTING or (folder / LOCK_NAME).exists():
        return
    if any(not (e.name.startswith(".hydra") or e.name == job_log) for e in folder.iterdir()):
        return
    shutil.rmtree(folder, ignore_errors=True)
    if up_to is None:
        return
    stop = up_to.resolve()
    for parent in folder.resolve().parents:
        if stop not in (parent, *parent.parents) or any(parent.iterdir()):
            break
        parent.rmdir()


def hydra_folder() -> Path | None:
    """The current Hydra job's output folder, if a Hydra job is running."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def run_job(cfg: DictConfig, fn: Callable[[], T]) -> T:
    """A Hydra job's body: one-line user errors; a folder the job created and left empty is removed.

    In a multirun a user error is printed in one line and raised on, so Hydra records the job as failed
    and runs the remaining jobs (a ``SystemExit`` would stop the whole sweep).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    folder = hydra_folder()
    try:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            try:
                return fn()
            except USER_ERRORS as err:
                print(f"error: {err}", file=sys.stderr)
                raise
        return report_user_errors(fn)
    except BaseException:
        if folder is not None:
            job_log = f"{HydraConfig.get().job.name}.log" if HydraConfig.initialized() else ""
            discard_if_empty(folder, up_to=Path(cfg.paths.log_dir), job_log=job_log)
        raise


def started_together() -> bool:
    """Whether torchrun or SLURM started every process of the run with the same command."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def follower_overrides(config_name: str, argv: list[str]) -> list[str]:
    """A DDP process other than rank 0 logs into rank 0's run folder, without a ``.hydra/`` of its own.

    Under torchrun or SLURM every process starts with the same command, so ``out_dir`` must name the one
    run folder (each would otherwise make its own). A process started by Lightning's own launcher already
    carries rank 0's folder in its command; these come after it.
    """
    planned = job_overrides(argv)
    out = compose_job(config_name, planned[0][0]).get("out_dir") if planned else None
    if out is None and started_together():
        raise ConfigError("a run started by torchrun or SLURM needs out_dir=<folder>: one for all processes")
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", os.environ.get("LOCAL_RANK", "0")))
    run_dir = [f"hydra.run.dir={_hydra_override_value(Path(out).resolve())}"] if out else []
    job = Path(sys.argv[0]).stem  # Hydra names rank 0's job (and its log) after the entry module too
    return [*run_dir, "hydra.output_subdir=null", f"hydra.job.name={job}_rank{rank}"]


def launch(config_name: str, preflight: Preflight, hydra_main: Callable[[], object]) -> None:
    """Pre-check ``sys.argv`` (every job), then run ``hydra_main`` in ``out_dir`` when it is set.

    A DDP process other than rank 0 runs the command rank 0 already checked: straight to the job.
    """
    if not launched_rank_zero():
        sys.argv += report_user_errors(lambda: follower_overrides(config_name, sys.argv[1:]))
        hydra_main()
        return
    folder = report_user_errors(lambda: preflight_all(config_name, sys.argv[1:], preflight))
    if folder is None and started_together():
        report_user_errors(lambda: follower_overrides(config_name, sys.argv[1:]))  # refuses without out_dir
    if folder is not None:
        if folder.exists():
            _EXISTING.add(folder.resolve())
        keep_hydra_history(folder)
        sys.argv.append(f"hydra.run.dir={_hydra_override_value(folder.resolve())}")
    hydra_main()
