"""Model zoo: architectures registered by name, built with ``create_model``."""

from dream_pl.models import convnet, densenet, resnet
from dream_pl.models.registry import create_model, list_models, model_options, network_factory, register_model

__all__ = [
    "convnet",
    "create_model",
    "densenet",
    "list_models",
    "model_options",
    "network_factory",
    "register_model",
    "resnet",
]
