"""Shared fixtures: Hydra composition of the shipped configs, tiny run configs, the evaluation protocol."""

import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from torch import Tensor

from dream_pl.config import CONF_DIR, protocol_from
from dream_pl.data import RealData
from dream_pl.evaluation.protocol import EvalResult, evaluate_set
from dream_pl.models import network_factory
from dream_pl.schemas import EvalProtocol

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


# --- tiny distillation runs on the embedded mnist_5k ------------------------------------------

TINY = (
    "model.width=8",
    "ipc=1",
    "iterations=3",
    "distill.inner_loops=2",
    "distill.save_every=1",
    "distill.n_data=32",
    "distill.batch_real=16",
    "evaluation.enabled=false",
    "logger=none",
    "trainer.enable_progress_bar=false",
)
SELECTION = {  # every selecting sampler refreshes at steps 0, 3, ... on a 100-image subset per class
    "dream": ("sampler.interval=3", "sampler.embed_subset=100", "sampler.n_clusters=16"),
    "herding": ("sampler.interval=3", "sampler.embed_subset=100"),
    "kcenter": ("sampler.interval=3", "sampler.embed_subset=100"),
    "random": (),
}


def tiny_train_config(out: Path, *extra: str) -> DictConfig:
    """A train config for a seconds-long run into ``out``: 3 outer x 2 inner steps, width-8 ConvNet."""
    sampler = next((o.split("=", 1)[1] for o in extra if o.startswith("sampler=")), "dream")
    return copy.deepcopy(_compose_once("train", (*TINY, *SELECTION[sampler], f"out_dir={out}", *extra)))


@pytest.fixture
def tiny_cfg() -> Callable[..., DictConfig]:
    """``tiny_cfg(tmp_path, "sampler=random", ...)`` -> a tiny train config (:func:`tiny_train_config`)."""
    return tiny_train_config


@pytest.fixture(scope="session")
def mnist_protocol() -> EvalProtocol:
    """The shipped evaluation protocol with mnist_5k's recipe (shrink it with ``dataclasses.replace``)."""
    return protocol_from(_compose_once("eval", ("synthetic=x.pt",)).evaluation)


@pytest.fixture(scope="session")
def evaluate_on_test_set() -> Callable[..., EvalResult]:
    """``evaluate_on_test_set(data, images, labels, protocol, width=16)``: ConvNet-3 runs on the CPU,
    tested on ``data``'s real test set."""

    def evaluate(data: RealData, images: Tensor, labels: Tensor, protocol: EvalProtocol, width: int = 16):
        spec = data.spec
        shape = {"channels": spec.channels, "num_classes": spec.num_classes, "size": spec.size}
        return evaluate_set(
            network_factory("convnet", **shape, width=width),
            images,
            labels,
            (data.test_images, data.test_labels),
            model="convnet",
            mean=spec.mean,
            std=spec.std,
            num_classes=spec.num_classes,
            protocol=protocol,
            accelerator="cpu",
        )

    return evaluate
