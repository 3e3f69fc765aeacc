"""Name -> constructor registry, so configs pick architectures by string (timm style)."""

import inspect
from collections.abc import Callable
from functools import partial

from torch import nn

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Record a constructor under ``name``.

    Constructors take keyword arguments ``channels``, ``num_classes``, ``size`` plus their own
    knobs, and return a module with ``forward``, ``embed`` and ``embed_dim``.

    Raises:
        ValueError: if ``name`` is already taken (silent overwrites hide typos).
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def model_options(name: str) -> list[str]:
    """The knobs of architecture ``name`` a config may set (beyond the dataset's shape)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(list_models())}")
    shape = ("channels", "num_classes", "size")
    return [p for p in inspect.signature(_REGISTRY[name]).parameters if p not in shape]


def create_model(name: str, *, channels: int, num_classes: int, size: int, **overrides: object) -> nn.Module:
    """Build a registered model; ``None`` overrides fall back to the constructor default.

    Dropping ``None`` lets Hydra configs leave a knob as ``null`` without knowing its default.

    Raises:
        ValueError: for an unknown ``name``; the message lists the allowed names.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(list_models())}")
    knobs = {key: value for key, value in overrides.items() if value is not None}
    return _REGISTRY[name](channels=channels, num_classes=num_classes, size=size, **knobs)


def network_factory(
    name: str, *, channels: int, num_classes: int, size: int, **knobs: object
) -> Callable[[], nn.Module]:
    """A no-argument builder of architecture ``name`` for a dataset's shape (every caller's networks)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(list_models())}")
    return partial(create_model, name, channels=channels, num_classes=num_classes, size=size, **knobs)
