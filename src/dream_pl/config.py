"""Configuration checks that run before any work: one clear line naming the bad value and what is allowed.

Hydra composes the config; these checks cover what composition cannot know (value ranges, names that
live in registries, sizes that depend on the dataset). Unknown group options are caught before Hydra
runs, so the user sees the allowed options in one line instead of Hydra's multi-line report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dream_pl.augment import parse_strategy
from dream_pl.data import DATASETS
from dream_pl.matchers import METRICS
from dream_pl.models import list_models

CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = (
    "dataset",
    "model",
    "matcher",
    "sampler",
    "init",
    "evaluation",
    "logger",
    "trainer",
    "experiment",
    "debug",
)
BACKENDS = ("auto", "faiss", "torch")


class ConfigError(ValueError):
    """A bad configuration value; its message is one line meant for the user."""


def dataclass_knobs(cls: type, node: DictConfig) -> dict[str, Any]:
    """The entries of a config block that are fields of dataclass ``cls`` (the block may hold more)."""
    return {f.name: node[f.name] for f in fields(cls) if f.name in node}


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Option names of a config group (yaml files in ``conf/<group>``)."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_overrides(argv: Iterable[str], conf_dir: Path = CONF_DIR) -> None:
    """Reject ``group=option`` command-line overrides whose option does not exist."""
    for arg in argv:
        if "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in GROUPS or "(" in value:
            continue
        allowed = group_options(key, conf_dir)
        for option in value.split(","):
            if option not in allowed and option != "null":
                raise ConfigError(f"unknown {key} {option!r}; allowed: {', '.join(allowed)}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _require_int(name: str, value: object, minimum: int = 1, note: str = "") -> None:
    """An integer >= ``minimum`` (bools and floats such as 1.5 are refused, not truncated)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    _require(ok, f"{name}={value!r} must be an integer >= {minimum}{note}")


def _check_choice(name: str, value: object, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    _require(value in allowed, f"{name}={value!r} is not allowed; allowed: {', '.join(allowed)}")


def _check_strategy(name: str, value: str) -> None:
    try:
        parse_strategy(value)
    except ValueError as err:
        raise ConfigError(f"{name}={value!r}: {err}") from None


def validate(cfg: DictConfig) -> None:
    """Range and name checks on a composed train config (no data needed)."""
    _require_int("ipc", cfg.ipc, note=" (images per class)")
    _require_int("iterations", cfg.iterations)
    _require_int("eval_every", cfg.get("eval_every", 0), minimum=0, note=" (0 = off)")
    _require_int("diagnostics_every", cfg.get("diagnostics_every", 0), minimum=0, note=" (0 = off)")
    _check_choice("dataset.name", cfg.dataset.name, sorted(DATASETS))
    _check_choice("model.name", cfg.model.name, list_models())
    d = cfg.distill
    for key in ("factor", "inner_loops", "batch_real", "batch_syn_max", "n_data", "save_every"):
        _require_int(f"distill.{key}", d[key])
    _require(float(d.lr_img) > 0, f"distill.lr_img={d.lr_img} must be > 0")
    _require(
        0.0 <= float(d.net_cutmix_p) <= 1.0,
        f"distill.net_cutmix_p={d.net_cutmix_p} must be in [0, 1]",
    )
    for key in ("match_dsa", "net_dsa"):
        _check_strategy(f"distill.{key}", d[key])
    if "metric" in cfg.matcher:
        _check_choice("matcher.metric", cfg.matcher.metric, METRICS)
    s = cfg.sampler
    for key in ("n_clusters", "n_per_cluster", "interval", "batch_size", "max_iter"):
        if key in s:
            _require_int(f"sampler.{key}", s[key])
    for group in ("sampler", "init"):
        if "backend" in cfg[group]:
            _check_choice(f"{group}.backend", cfg[group].backend, BACKENDS)
    validate_evaluation(cfg.evaluation)


def validate_evaluation(ev: DictConfig) -> None:
    """Checks on the ``evaluation`` block (shared by train and evaluate)."""
    for key in ("repeats", "epochs", "batch_size"):
        _require_int(f"evaluation.{key}", ev[key])
    _require(
        isinstance(ev.models, Sequence) and not isinstance(ev.models, str),
        f"evaluation.models={ev.models!r} must be a list, e.g. [convnet, resnet10]",
    )
    for name in ev.models:
        _check_choice("evaluation.models", name, list_models())
    if "periodic" in ev:
        for key in ("epochs", "repeats"):
            _require_int(f"evaluation.periodic.{key}", ev.periodic[key])
    _check_strategy("evaluation.dsa", ev.dsa)
    _require(0.0 <= float(ev.cutmix_p) <= 1.0, f"evaluation.cutmix_p={ev.cutmix_p} must be in [0, 1]")


def validate_against_data(cfg: DictConfig, class_sizes: list[int]) -> None:
    """Checks that need the loaded dataset: selections must fit in the smallest class."""
    smallest = min(class_sizes)
    where = f"the smallest class of {cfg.dataset.name} has {smallest} images; allowed: 1..{smallest}"
    s = cfg.sampler
    if "n_clusters" in s:
        _require(
            int(s.n_clusters) <= smallest,
            f"sampler.n_clusters (N) = {s.n_clusters} is too large: {where}",
        )
        total = int(s.n_clusters) * int(s.n_per_cluster)
        _require(
            total <= smallest,
            f"sampler N x n = {s.n_clusters} x {s.n_per_cluster} = {total} is too large: {where}",
        )
    if "batch_size" in s and "interval" in s:
        _require(
            int(s.batch_size) <= smallest,
            f"sampler.batch_size={s.batch_size} is too large: {where}",
        )
    per_class = int(cfg.ipc) * int(cfg.distill.factor) ** 2
    if not str(cfg.init.get("_target_", "")).endswith("NoiseInit"):
        _require(
            per_class <= smallest,
            f"ipc x factor^2 = {cfg.ipc} x {cfg.distill.factor}^2 = {per_class} real images per class "
            "are needed "
            f"to initialise, but {where.split(';')[0]}",
        )
