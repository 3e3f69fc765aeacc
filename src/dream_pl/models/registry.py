"""Name -> constructor registry, so configs pick architectures by string (timm style)."""

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

ModelFactory = Callable[..., nn.Module]

_SHAPE = ("channels", "num_classes", "size")


@dataclass(frozen=True)
class _Entry:
    """A constructor plus the value limits its knobs declare (see ``register_model``)."""

    factory: ModelFactory
    choices: Mapping[str, tuple[str, ...]]
    maxima: Mapping[str, float]


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str,
    *,
    choices: Mapping[str, Iterable[str]] | None = None,
    maxima: Mapping[str, float] | None = None,
) -> Callable[[ModelFactory], ModelFactory]:
    """Record a constructor under ``name``.

    Constructors take keyword arguments ``channels``, ``num_classes``, ``size`` plus their own
    knobs, and return a module with ``forward``, ``embed`` and ``embed_dim``. ``choices`` lists
    the values a string knob accepts (e.g. ``{"norm": NORMS}``) and ``maxima`` the inclusive upper
    bound of a numeric knob, so ``check_model`` can reject bad configs with a one-line message.

    Raises:
        ValueError: if ``name`` is already taken (silent overwrites hide typos), or ``choices`` /
            ``maxima`` name a knob the constructor does not take.
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        entry = _Entry(
            factory,
            {knob: tuple(sorted(values)) for knob, values in (choices or {}).items()},
            dict(maxima or {}),
        )
        unknown = sorted({*entry.choices, *entry.maxima} - set(inspect.signature(factory).parameters))
        if unknown:
            raise ValueError(f"model {name!r} declares limits for unknown knobs: {', '.join(unknown)}")
        _REGISTRY[name] = entry
        return factory

    return decorator


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_options(name: str) -> list[str]:
    """The knobs of architecture ``name`` a config may set (beyond the dataset's shape)."""
    return [p for p in inspect.signature(_entry(name).factory).parameters if p not in _SHAPE]


def create_model(name: str, *, channels: int, num_classes: int, size: int, **overrides: object) -> nn.Module:
    """Build a registered model; ``None`` overrides fall back to the constructor default.

    Dropping ``None`` lets Hydra configs leave a knob as ``null`` without knowing its default.

    Raises:
        ValueError: for an unknown ``name``; the message lists the allowed names.
    """
    factory = _entry(name).factory
    knobs = {key: value for key, value in overrides.items() if value is not None}
    return factory(channels=channels, num_classes=num_classes, size=size, **knobs)


def network_factory(
    name: str, *, channels: int, num_classes: int, size: int, **knobs: object
) -> Callable[[], nn.Module]:
    """A no-argument builder of architecture ``name`` for a dataset's shape (every caller's networks)."""
    _entry(name)
    return partial(create_model, name, channels=channels, num_classes=num_classes, size=size, **knobs)


def _knob_problem(value: object, annotation: object, choices: tuple[str, ...] | None, maximum: float) -> str:
    """Why ``value`` does not fit a knob, or ``""`` if it does (or its type is not checked here)."""
    if choices is not None:
        return "" if value in choices else f"allowed: {', '.join(choices)}"
    if annotation not in (int, float):
        return ""
    kinds = (int,) if annotation is int else (int, float)
    # Both kinds must be > 0 (so ints >= 1); `< inf` rejects inf, and NaN fails every comparison.
    if isinstance(value, kinds) and not isinstance(value, bool) and 0 < value < math.inf and value <= maximum:
        return ""
    allowed = "an integer >= 1" if annotation is int else "a finite number > 0"
    return f"must be {allowed}" + (f" and <= {maximum:g}" if maximum < math.inf else "")


def check_model(
    name: str, knobs: Mapping[str, object], *, channels: int, num_classes: int, size: int
) -> None:
    """Reject a bad architecture config with a one-line message before any work starts.

    Without this a bad knob fails late with a deep traceback (``width=0`` divides by zero in
    GroupNorm, a convnet too deep for the image shrinks it to 0 px). Checks, in order: the name,
    each knob's name, integer knobs are ints >= 1, float knobs finite and > 0, bounded by the
    model's ``maxima``, string knobs within the model's ``choices``; ``None`` keeps the
    constructor default. Finally builds the network and runs one forward pass of a zero image
    (eval mode, no grad, global RNG untouched), which catches combinations the single-knob
    checks cannot see.

    Raises:
        ValueError: naming the bad knob as ``model.<knob>=<value>`` and what is allowed, or the
            probe's error.
    """
    entry = _entry(name)
    parameters = inspect.signature(entry.factory, eval_str=True).parameters
    options = [knob for knob in parameters if knob not in _SHAPE]
    for knob, value in knobs.items():
        if knob not in options:
            raise ValueError(f"model.{knob}={value!r} is not a knob of {name}; allowed: {', '.join(options)}")
        if value is None:
            continue
        annotation = parameters[knob].annotation
        problem = _knob_problem(value, annotation, entry.choices.get(knob), entry.maxima.get(knob, math.inf))
        if problem:
            raise ValueError(f"model.{knob}={value!r} is not allowed; {problem}")
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model = create_model(name, channels=channels, num_classes=num_classes, size=size, **knobs)
            model.eval()(torch.zeros(1, channels, size, size))
    except Exception as error:  # whatever the probe hits, the config cannot run
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise ValueError(
            f"model {name} with {dict(knobs)} cannot run on {channels}x{size}x{size} images: {reason}"
        ) from error


def has_batch_norm(net: nn.Module) -> bool:
    """Whether ``net`` normalises over the batch: its statistics then depend on which rows it sees."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
