"""Static facts about each supported dataset: shape, class count and normalisation constants.

The constants are the ones the reference code normalises with (IDC/DREAM `data.py`), so that
distilled images stay comparable with the published ones. A folder of your own images (``dataset=folder``)
has no static facts: its spec is read from its options and its listed tree (:func:`spec_for`), and its mean
and std are measured from its training images when they load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from dream_pl.data.folder import FOLDER, FolderLayout, FolderOptions, folder_options, scan


@dataclass(frozen=True)
class DatasetSpec:
    """Shape and normalisation of one dataset.

    Attributes:
        name: Registry key, e.g. ``"cifar10"``.
        channels: Image channels C.
        size: Image height and width H = W after loading.
        num_classes: Number of classes K; labels are 0..K-1.
        mean: Per-channel mean of pixels in [0, 1]; empty for a folder dataset whose images are not loaded
            (measured from them on load), so normalising with it fails instead of using a guess.
        std: Per-channel standard deviation of pixels in [0, 1]; empty where ``mean`` is.
        smallest_class: Training images in the smallest class, where the dataset fixes it (None where
            its options choose the images, or unrecorded): lets sizes be refused before the data loads.
    """

    name: str
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    smallest_class: int | None = None


_MNIST_STATS = ((0.1307,), (0.3081,))
_FASHION_STATS = ((0.2861,), (0.3530,))
_SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
_CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist_5k", 1, 28, 10, *_MNIST_STATS, smallest_class=400),  # 4,000 train, stratified
        DatasetSpec("mnist", 1, 28, 10, *_MNIST_STATS, smallest_class=5421),  # the digit 5
        DatasetSpec("fashion_mnist", 1, 28, 10, *_FASHION_STATS, smallest_class=6000),
        DatasetSpec("svhn", 3, 32, 10, *_SVHN_STATS),
        DatasetSpec("cifar10", 3, 32, 10, *_CIFAR_STATS, smallest_class=5000),
        DatasetSpec("cifar100", 3, 32, 100, *_CIFAR_STATS, smallest_class=500),
        DatasetSpec("tiny_imagenet", 3, 64, 200, *_IMAGENET_STATS, smallest_class=500),
        # Size and class count depend on the chosen subset; see `get_spec` overrides.
        DatasetSpec("imagenet_subset", 3, 224, 10, *_IMAGENET_STATS),
        DatasetSpec("imagenet", 3, 64, 1000, *_IMAGENET_STATS),  # options: nclass (first N wnids), size
    )
}
DATASET_NAMES: tuple[str, ...] = (*DATASETS, FOLDER)  # every dataset= name: the registry and a folder


def get_spec(name: str, **overrides: int) -> DatasetSpec:
    """Look up a dataset spec, optionally replacing ``size`` and/or ``num_classes``.

    Overrides exist because an ImageNet subset's resolution and class list are chosen in its
    config, not fixed by the dataset.

    Args:
        name: Registry key in `DATASETS`.
        **overrides: ``size`` and/or ``num_classes``.

    Returns:
        The (possibly updated) spec.

    Raises:
        ValueError: For an unknown name or an override other than ``size``/``num_classes``.
    """
    if name == FOLDER:
        raise ValueError("A folder dataset's spec depends on its tree: use spec_for('folder', options).")
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; allowed names: {', '.join(DATASET_NAMES)}.")
    unknown = set(overrides) - {"size", "num_classes"}
    if unknown:
        raise ValueError(f"get_spec accepts only size/num_classes overrides, got {sorted(unknown)}.")
    return replace(DATASETS[name], **overrides)


def folder_spec(
    layout: FolderLayout,
    options: FolderOptions,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
) -> DatasetSpec:
    """A folder dataset's spec: its options' shape, its tree's classes and smallest class, measured stats."""
    return DatasetSpec(
        FOLDER,
        options.channels,
        options.size,
        len(layout.classes),
        mean,
        std,
        smallest_class=min(layout.class_sizes),
    )


def spec_for(name: str, options: Mapping[str, object]) -> DatasetSpec:
    """The spec of ``name`` with the shape its loader options choose: ``size``, ``classes`` or ``nclass``.

    A folder dataset's tree is listed (no image opened): its classes and smallest class come from there,
    and its mean and std stay empty until the images load.
    """
    if name == FOLDER:
        checked = folder_options(options)
        return folder_spec(scan(checked), checked)
    shape = {"size": int(options["size"])} if "size" in options else {}
    if "classes" in options:
        shape["num_classes"] = len(options["classes"])
    if "nclass" in options:
        shape["num_classes"] = int(options["nclass"])
    return get_spec(name, **shape)
