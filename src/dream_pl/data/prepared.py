"""The prepared format: a dataset converted once into per-class uint8 arrays (the command: :mod:`.prepare`).

ImageNet-scale sets are folders of JPEGs, and decoding and resizing them at every run start costs minutes
(ImageNet-100 at 224 px is ~130,000 files). This decodes them once, class by class with a progress bar,
into ``<data_dir>/prepared/<key>/{train,test}/<class>.npy`` (uint8 [n, C, H, W] at the training
resolution), assembled into one class-sorted array per split (``train.npy``, ``test.npy``) plus
``meta.json`` with each class's count; :func:`dream_pl.data.load_dataset` reads a prepared folder before the
raw files, memory-mapped: a class is a contiguous slice, so a process of a sharded run reads (and holds)
only its classes' pages. Each class file is written atomically and an interrupted conversion resumes
where it stopped. Plain ``.npy`` gives random access within a class, which matching and clustering need:
WebDataset's sequential tar shards do not, and litdata's chunked format targets streaming shuffled samples
from object storage, which a class-indexed read does not need.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from rich.progress import Progress

from dream_pl.data.specs import DatasetSpec
from dream_pl.files import atomic_write

META = "meta.json"


def prepared_key(name: str, options: dict) -> str:
    """The folder name of a prepared dataset: its name plus the options that change its images."""
    parts = [name]
    if "nclass" in options:
        parts.append(f"{int(options['nclass'])}c")
    if "classes" in options:
        digest = hashlib.blake2b(" ".join(options["classes"]).encode(), digest_size=4).hexdigest()
        parts.append(f"{len(options['classes'])}c-{digest}")
    if "size" in options:
        parts.append(f"{int(options['size'])}px")
    return "_".join(parts)


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
) -> Path:
    """Decode every class not yet written, assemble each split, then write ``meta.json``.

    ``classes``: per class, its name and its train and test items; ``decode(items) -> uint8 [n, C, H, W]``.
    A conversion stopped part-way resumes at the first class without a file.
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
    atomic_write(folder / META, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    for split in ("train", "test"):  # the class files were the resume points; the split files replace them
        shutil.rmtree(folder / split)
    return folder
