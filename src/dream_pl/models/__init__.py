"""Model zoo: architectures registered by name, built with ``create_model``."""

from dream_pl.models import convnet, densenet, resnet
from dream_pl.models.registry import (
    check_model,
    create_model,
    has_batch_norm,
    list_models,
    model_options,
    network_factory,
    register_model,
)

__all__ = [
    "check_model",
    "convnet",
    "create_model",
    "densenet",
    "has_batch_norm",
    "list_models",
    "model_options",
    "network_factory",
    "register_model",
    "resnet",
]
