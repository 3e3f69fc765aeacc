"""The prepared format: a dataset converted once into per-class uint8 arrays (the command: :mod:`.prepare`).

ImageNet-scale sets are folders of JPEGs, and decoding and resizing them at every run start costs minutes
(ImageNet-100 at 224 px is ~130,000 files). This decodes them once, class by class with a progress bar,
into ``<data_dir>/prepared/<key>/{train,test}/<class>.npy`` (uint8 [n, C, H, W] at the training
resolution), assembled into one class-sorted array per split (``train.npy``, ``test.npy``) plus
``meta.json`` with each class's count (a folder dataset's also with the mean and std measured from its
training images); :func:`dream_pl.data.load_dataset` reads a prepared folder before the raw files,
memory-mapped: a class is a contiguous slice, so a process of a sharded run reads (and holds) only its
classes' pages. Each class file is written atomically and an interrupted conversion resumes
where it stopped. Plain ``.npy`` gives random access within a class, which matching and clustering need:
WebDataset's sequential tar shards do not, and litdata's chunked format targets streaming shuffled samples
from object storage, which a class-indexed read does not need.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from rich.progress import Progress

from dream_pl.data.specs import DatasetSpec
from dream_pl.files import atomic_write

META = "meta.json"


def prepared_key(name: str, options: dict, source: str = "") -> str:
    """The folder name of a prepared dataset: its name plus the options that change its images.

    ``source``: what the images are decoded from where it may change (a folder dataset: its root's name and
    the digest of its files), so a changed tree is never read from a stale copy.
    """
    parts = [name, source] if source else [name]
    if "nclass" in options:
        parts.append(f"{int(options['nclass'])}c")
    if "classes" in options:
        digest = hashlib.blake2b(" ".join(options["classes"]).encode(), digest_size=4).hexdigest()
        parts.append(f"{len(options['classes'])}c-{digest}")
    if "channels" in options:
        parts.append(f"{int(options['channels'])}ch")
    if "size" in options:
        parts.append(f"{int(options['size'])}px")
    return "_".join(parts)


def pixel_stats(chunks: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images [n, C, H, W], as pixels in [0, 1].

    Counted as exact per-channel histograms, so the numbers do not depend on how the images are chunked:
    a prepared copy and the raw files give a run the same normalisation, bit for bit. A chunk is one class.
    """
    hist: torch.Tensor | None = None
    for chunk in chunks:
        for part in chunk.split(256):
            counts = torch.stack(
                [torch.bincount(part[:, c].reshape(-1), minlength=256) for c in range(part.shape[1])]
            )
            hist = counts if hist is None else hist + counts
    if hist is None:
        raise ValueError("pixel_stats needs at least one image.")
    values = list(range(256))
    mean, std = [], []
    for row in hist.tolist():
        n = sum(row)
        s1 = sum(v * k for v, k in zip(values, row, strict=True))
        s2 = sum(v * v * k for v, k in zip(values, row, strict=True))
        mean.append(s1 / (255 * n))
        std.append(math.sqrt(n * s2 - s1 * s1) / (255 * n))  # exact integers under the root
    return tuple(mean), tuple(std)


def class_file(folder: Path, split: str, c: int) -> Path:
    """Where class ``c`` of ``split`` is written before the split is assembled (resume points)."""
    return folder / split / f"{c:05d}.npy"


def split_file(folder: Path, split: str) -> Path:
    """A split's images, every class in order: uint8 [N, C, H, W]."""
    return folder / f"{split}.npy"


def read_prepared(folder: Path) -> tuple[dict, list[tuple[torch.Tensor, torch.Tensor]]] | None:
    """(meta, [(train images, labels), (test images, labels)]) of a complete prepared folder, else None.

    The images are memory-mapped (copy-on-write), not read: a process that uses a few classes (its share
    of a sharded run) touches only their pages, so its memory grows with its classes, not the dataset.
    """
    meta_path = folder / META
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    splits = []
    for split in ("train", "test"):
        images = torch.from_numpy(np.load(split_file(folder, split), mmap_mode="c"))
        counts = torch.tensor(meta[f"{split}_counts"])
        splits.append((images, torch.arange(len(counts)).repeat_interleave(counts)))
    return meta, splits


def _assemble(folder: Path, split: str, counts: list[int]) -> None:
    """Concatenate a split's class files into one array, class by class (memory: one class)."""
    parts = [np.load(class_file(folder, split, c), mmap_mode="r") for c in range(len(counts))]
    header = {"descr": "|u1", "fortran_order": False, "shape": (sum(counts), *parts[0].shape[1:])}

    def write(f: BinaryIO) -> None:
        np.lib.format.write_array_header_1_0(f, header)
        for part in parts:
            f.write(np.ascontiguousarray(part).tobytes())

    atomic_write(split_file(folder, split), write)


def prepare(
    spec: DatasetSpec,
    folder: Path,
    classes: Sequence[tuple[str, Sequence, Sequence]],
    decode: Callable[[Sequence], torch.Tensor],
    *,
    progress: bool = True,
    stats: bool = False,
) -> Path:
    """Decode every class not yet written, assemble each split, then write ``meta.json``.

    ``classes``: per class, its name and its train and test items; ``decode(items) -> uint8 [n, C, H, W]``.
    A conversion stopped part-way resumes at the first class without a file. ``stats``: measure the training
    images' mean and std (:func:`pixel_stats`) into ``meta.json``, for a dataset without published ones.
    """
    if (folder / META).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, list[int]] = {"train": [], "test": []}
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"preparing {folder.name}", total=len(classes))
        for c, (_, train, test) in enumerate(classes):
            for split, items in (("train", train), ("test", test)):
                if not class_file(folder, split, c).is_file():
                    images = np.ascontiguousarray(decode(items).numpy())
                    atomic_write(class_file(folder, split, c), lambda f, x=images: np.save(f, x))
                counts[split].append(int(np.load(class_file(folder, split, c), mmap_mode="r").shape[0]))
            bar.advance(task)
    for split in ("train", "test"):
        _assemble(folder, split, counts[split])
    meta = {
        "name": spec.name,
        "channels": spec.channels,
        "size": spec.size,
        "num_classes": len(classes),
        "classes": [str(name) for name, _, _ in classes],
        "train_counts": counts["train"],
        "test_counts": counts["test"],
    }
    if stats:
        train = np.load(split_file(folder, "train"), mmap_mode="r")
        ends = np.cumsum(counts["train"]).tolist()
        per_class = (
            torch.from_numpy(np.array(train[e - n : e])) for e, n in zip(ends, counts["train"], strict=True)
        )
        meta["mean"], meta["std"] = pixel_stats(per_class)
    atomic_write(folder / META, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    for split in ("train", "test"):  # the class files were the resume points; the split files replace them
        shutil.rmtree(folder / split)
    return folder
