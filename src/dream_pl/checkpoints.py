"""Which checkpoint a run resumes from, and whether it may: a readable file of the same run.

A resumed run must be the run that wrote the checkpoint. The keys that fix tensor shapes or the schedule
(:data:`IDENTITY`) are stored in every checkpoint and compared before anything is loaded: a mismatch would
otherwise fail half-way with a size-mismatch traceback, or silently continue one run with another's
settings. A checkpoint that cannot be read is reported with the ways on. Both checks only read: nothing
in the run folder changes when they refuse, and they read little: the checkpoint is memory-mapped, so only
its zip directory and pickled structure (kilobytes) come from disk, not the synthetic set and the
optimiser's buffers; Lightning alone reads the whole file, once, when the run resumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from dream_pl.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

    from dream_pl.sharding import Shard


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
ENGINE_KEY = "engine"  # the engine's state (network momentum, selection) inside a checkpoint
IMAGE_KEYS = ("synthetic.images", "synthetic.labels")  # the module's tensors with one row per stored image
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
    """The checkpoint's contents, memory-mapped, or :class:`ResumeError` naming the file and the ways on.

    Its tensors stay on disk until touched: reading the run's config and keys costs the zip directory and
    the pickle, whatever the size of the synthetic set. A truncated file has lost its zip directory (at the
    end), so it is still found unreadable here.
    """
    import torch  # only when a checkpoint is there: the config checks before it stay torch-free

    try:
        blob = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
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
    if ENGINE_KEY not in blob or CONFIG_KEY not in blob:
        raise ResumeError(
            f"{path} was written by an earlier dream-pl (before its engine, 2662f8e): resume it with that "
            "version, or start afresh with a new out_dir"
        )
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
    diff = identity_mismatch(read_checkpoint(path)[CONFIG_KEY], cfg)
    if diff:
        said = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, old, new in diff)
        raise ResumeError(
            f"cannot resume {path}: it belongs to a run with other settings ({said}); pass out_dir=<new "
            "folder> to start a new run, or the checkpoint's values to continue it"
        )
    return path


def per_image_states(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """A checkpoint's tensors with a row per stored image: images, labels, the image momentum (once stepped).

    The momentum is the image optimiser's (Lightning's first and only) buffer of its one parameter.
    """
    from torch import Tensor

    states = {key: checkpoint["state_dict"][key] for key in IMAGE_KEYS}
    image_opt = (checkpoint.get("optimizer_states") or [{}])[0].get("state", {}).get(0, {})
    if isinstance(image_opt.get("momentum_buffer"), Tensor):
        states["momentum_buffer"] = image_opt["momentum_buffer"]
    return states


def put_per_image_states(checkpoint: dict[str, Any], states: dict[str, Tensor]) -> None:
    """Write :func:`per_image_states`' tensors back into ``checkpoint``.

    The optimiser's entries are replaced by copies: ``Optimizer.state_dict()`` shares the live
    per-parameter state dicts, so writing into them would change the running optimiser.
    """
    for key in IMAGE_KEYS:
        checkpoint["state_dict"][key] = states[key]
    if "momentum_buffer" in states:
        image_opt = checkpoint["optimizer_states"][0]
        param_states = {
            **image_opt["state"],
            0: {**image_opt["state"][0], "momentum_buffer": states["momentum_buffer"]},
        }
        checkpoint["optimizer_states"][0] = {**image_opt, "state": param_states}


def gather_image_rows(checkpoint: dict[str, Any], shard: Shard, ipc: int, num_classes: int) -> None:
    """Classes sharded: replace the held rows of the images, labels and momentum by every class's (rank 0).

    A collective (every process calls it); only rank 0, which writes the file, gets the whole set, so a
    checkpoint holds every class whatever the number of processes.
    """
    if not shard.sharded:
        return
    whole = {
        key: shard.gather_classes(local, ipc, num_classes, dst=0)
        for key, local in per_image_states(checkpoint).items()
    }
    if shard.rank == 0:
        put_per_image_states(checkpoint, whole)


def keep_image_rows(checkpoint: dict[str, Any], shard: Shard, ipc: int) -> None:
    """Cut every class's rows of the images, labels and momentum down to the classes ``shard`` holds."""
    states = per_image_states(checkpoint)
    put_per_image_states(checkpoint, {k: shard.own_rows(v, ipc) for k, v in states.items()})
