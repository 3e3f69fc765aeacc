"""Which checkpoint a run resumes from, and whether it may: a readable file of the same run.

A resumed run must be the run that wrote the checkpoint. The keys that fix tensor shapes or the schedule
(:data:`IDENTITY`) are stored in every checkpoint and compared before anything is loaded: a mismatch would
otherwise fail half-way with a size-mismatch traceback, or silently continue one run with another's
settings. A checkpoint that cannot be read is reported with the ways on. Both checks only read: nothing
in the run folder changes when they refuse.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dream_pl.errors import UserError

log = logging.getLogger("dream_pl.checkpoints")

# Resuming with another value of these would change tensor shapes, the schedule or the random streams.
IDENTITY = (
    "dataset",
    "ipc",
    "seed",
    "distill.factor",
    "distill.inner_loops",
    "model",
    "matcher",
    "sampler",
)
NOT_IDENTITY = ("sampler.embed_chunk", "init.embed_chunk")  # memory knobs inside those blocks
CONFIG_KEY = "dream_pl_config"  # the run's resolved config inside a checkpoint
_ABSENT = "<absent>"


class ResumeError(UserError):
    """The checkpoint to resume from is missing, unreadable or of another run."""


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out |= _flatten(f"{prefix}.{key}", item)
        return out
    return {prefix: value}


def identity(config: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`IDENTITY` values of a config, as dotted keys (``sampler.n_clusters``) -> plain values."""
    node = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
    out: dict[str, Any] = {}
    for key in IDENTITY:
        value = OmegaConf.select(node, key, default=_ABSENT)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        out |= _flatten(key, value)
    return {k: v for k, v in out.items() if k not in NOT_IDENTITY}


def identity_mismatch(saved: Mapping[str, Any], current: DictConfig) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, current value) for every identity key that differs."""
    then, now = identity(saved), identity(current)
    return [
        (key, then.get(key, _ABSENT), now.get(key, _ABSENT))
        for key in sorted(then.keys() | now.keys())
        if then.get(key, _ABSENT) != now.get(key, _ABSENT)
    ]


def other_checkpoints(path: Path) -> list[Path]:
    """The other ``.ckpt`` files beside ``path``, newest first: where a run may go back to."""
    others = [p for p in path.parent.glob("*.ckpt") if p != path and p.is_file()]
    return sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, or :class:`ResumeError` naming the file and the ways on."""
    import torch  # only when a checkpoint is there: the config checks before it stay torch-free

    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, pickle or I/O errors: every one means "cannot be read"
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        older = other_checkpoints(path)
        back = (
            f"go back to an older checkpoint with resume={older[0]}, or start afresh with a new out_dir"
            if older
            else "no older checkpoint is kept: start afresh with a new out_dir"
        )
        raise ResumeError(
            f"checkpoint {path} cannot be read ({reason}); {back}. Nothing in the folder was changed"
        ) from None
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ResumeError(f"{path} is not a Lightning checkpoint of a distillation run")
    return blob


def find_resume(cfg: DictConfig, out: Path) -> Path | None:
    """``resume=<ckpt>`` if given, else ``out``'s ``checkpoints/last.ckpt`` if a run stopped there."""
    if cfg.get("resume"):
        path = Path(cfg.resume)
        if not path.is_file():
            raise ResumeError(f"resume={cfg.resume} does not exist; give a .ckpt file of this run")
        return path
    last = out / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def check_resume(cfg: DictConfig, out: Path) -> Path | None:
    """The checkpoint this run resumes from (None: a fresh run), after checking it is this run's.

    Raises:
        ResumeError: the checkpoint is unreadable, or was written with other :data:`IDENTITY` values.
    """
    path = find_resume(cfg, out)
    if path is None:
        return None
    saved = read_checkpoint(path).get(CONFIG_KEY)
    if saved is None:
        log.warning("%s holds no run config (written by an older dream-pl); resuming unchecked", path)
        return path
    diff = identity_mismatch(saved, cfg)
    if diff:
        said = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, old, new in diff)
        raise ResumeError(
            f"cannot resume {path}: it belongs to a run with other settings ({said}); pass out_dir=<new "
            "folder> to start a new run, or the checkpoint's values to continue it"
        )
    return path
