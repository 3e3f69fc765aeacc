"""The command line's front door: bad input is refused in seconds, before Lightning loads or a folder appears.

``python -m dream_pl.train`` / ``dream_pl.evaluate`` compose every job's config as Hydra will (its compose
API; a multirun's sweep expanded by Hydra's own override parser and basic sweeper), run the entry point's
checks on each (values, the run folder, the checkpoint to resume from), and only then hand over to
``@hydra.main``. A rejected call prints one line, exits with status 2 and leaves nothing on disk; a job
that fails after Hydra made its folder removes that folder again if nothing but Hydra's own files landed
in it.

With ``out_dir`` set, Hydra's run folder *is* ``out_dir``: its ``.hydra/`` config and log sit beside the
checkpoints and results they describe (an earlier attempt's ``.hydra/`` is kept as ``.hydra.<k>/``). The
folder's lock is taken before anything touches it (the history move, Hydra's files) and held through the
job, so of two runs started together on one folder the second changes nothing in it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

from dream_pl.checkpoints import check_resume
from dream_pl.cli import (
    USER_ERRORS,
    check_out_dir,
    launched_rank_zero,
    report_user_errors,
    say_error,
)
from dream_pl.config import (
    CONF_DIR,
    ConfigError,
    check_overrides,
    composition_error,
    dataset_spec,
    validate,
    validate_eval,
)
from dream_pl.runlock import LOCK_NAME, RunLock

T = TypeVar("T")
HYDRA_FLAGS = ("-m", "--multirun")  # the only flags the pre-check understands; others go to Hydra alone
Preflight = Callable[[DictConfig, bool], Path | None]  # (job's config, multirun): its run folder if known
_EXISTING: set[Path] = set()  # run folders that existed before this call: never removed on failure
_CHECKED: list[bool] = [False]  # whether this process's pre-check validated every job it will run


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
    from dream_pl.evaluation.formats import read_set
    from dream_pl.evaluation.sets import BASELINES

    validate_eval(cfg)
    if str(cfg.synthetic) not in BASELINES:  # read in its format and checked against the dataset's shape
        options = {key: cfg[key] for key in ("factor", "experiment_index", "zca")}
        read_set(cfg.synthetic, cfg.format, dataset_spec(cfg.dataset), **options)
    return check_run_folder(cfg, multirun)


def job_overrides(argv: list[str]) -> tuple[list[list[str]], bool] | None:
    """Every job's overrides (a sweep expanded) and whether it is a multirun; None: leave it to Hydra.

    The sweep is expanded by Hydra's own parts, as a multirun will: its override parser, given the config
    loader so ``glob(...)`` sees the config groups, and the basic sweeper's expansion (``hydra/sweeper``
    is never changed by this project's configs). Hydra's own options (``--cfg``, ``--help``, ``-cn`` ...)
    and its ``hydra.`` overrides are Hydra's business; a call using the former is not pre-checked (each
    job still checks itself).
    """
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = any(arg in HYDRA_FLAGS for arg in argv)
    args = [arg for arg in argv if arg not in HYDRA_FLAGS]
    if any(arg.startswith("-") for arg in args):
        return None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        try:
            task = [o for o in parser.parse_overrides(args) if not o.is_hydra_override()]
            if not multirun:
                return [[o.input_line for o in task]], False
            return BasicSweeper.split_arguments(task, max_batch_size=None)[0], True
        except Exception as err:  # grammar errors, unsupported sweeps: reported by the pre-check in one line
            raise ConfigError(str(err).splitlines()[0]) from None


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
        raise composition_error(err) from None


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
    _CHECKED[0] = True
    return None if multirun or not fixed else fixed[0]


def prechecked() -> bool:
    """Whether the pre-check already validated this process's jobs, so a job need not validate again.

    False where it could not (Hydra's own flags such as ``--cfg``) and in a DDP follower process.
    """
    return _CHECKED[0]


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
    existed before the call (an ``out_dir`` the user made) or that another run holds is never removed; the
    lock this process holds goes with the folder.
    """
    if not folder.is_dir() or folder.resolve() in _EXISTING:
        return
    if (folder / LOCK_NAME).exists() and not RunLock(folder).held():
        return
    if any(not (e.name.startswith(".hydra") or e.name in (job_log, LOCK_NAME)) for e in folder.iterdir()):
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
                say_error(err)
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


def take_folder(folder: Path) -> RunLock:
    """Create ``folder`` if needed and take its lock, for the job to join: the first change a run makes.

    Raises:
        RunLockedError: another run took it since the pre-check; the folder is left as that run has it.
    """
    if folder.exists():
        _EXISTING.add(folder.resolve())
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder, joinable=True)
    lock.acquire()
    return lock


def launch(config_name: str, preflight: Preflight, hydra_main: Callable[[], object]) -> None:
    """Pre-check ``sys.argv`` (every job), then run ``hydra_main`` in ``out_dir`` when it is set.

    With ``out_dir`` set, its lock is taken before the earlier attempt's ``.hydra/`` moves and Hydra
    writes, and held until the job ends; the job's own lock joins it (:class:`RunLock`). A DDP process
    other than rank 0 runs the command rank 0 already checked: straight to the job.
    """
    if not launched_rank_zero():
        sys.argv += report_user_errors(lambda: follower_overrides(config_name, sys.argv[1:]))
        hydra_main()
        return
    folder = report_user_errors(lambda: preflight_all(config_name, sys.argv[1:], preflight))
    if folder is None:
        if started_together():
            report_user_errors(lambda: follower_overrides(config_name, sys.argv[1:]))  # refuses: no out_dir
        hydra_main()
        return
    lock = report_user_errors(lambda: take_folder(folder))
    try:
        keep_hydra_history(folder)
        sys.argv.append(f"hydra.run.dir={_hydra_override_value(folder.resolve())}")
        hydra_main()
    finally:
        discard_if_empty(folder)
        lock.release()
