"""Shared fixtures: Hydra composition of the shipped configs without running an entry point."""

import copy
import functools
from collections.abc import Callable, Iterator, Sequence

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from dream_pl.config import CONF_DIR

Composer = Callable[[Sequence[str]], DictConfig]


@functools.cache
def _compose_once(config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    """One Hydra composition (~0.2-0.4 s each); interpolations stay lazy, so results are reusable."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR.resolve()), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def _composer(config_name: str) -> Iterator[Composer]:
    """A function composing ``config_name``; each call gets its own copy, Hydra is left uninitialised."""

    def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
        return copy.deepcopy(_compose_once(config_name, tuple(overrides)))

    yield compose_config
    GlobalHydra.instance().clear()


@pytest.fixture
def compose_train() -> Iterator[Composer]:
    """``compose_train(["sampler=random", "ipc=1"])`` -> the train config as the CLI would see it."""
    yield from _composer("train")


@pytest.fixture
def compose_eval() -> Iterator[Composer]:
    """``compose_eval(["synthetic=x.pt"])`` -> the eval config as the CLI would see it."""
    yield from _composer("eval")
