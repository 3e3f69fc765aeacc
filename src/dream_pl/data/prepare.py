"""Convert a dataset once into per-class uint8 arrays (``python -m dream_pl.data.prepare imagenet ...``).

ImageNet-scale sets are folders of JPEGs, and decoding and resizing them at every run start costs minutes
(ImageNet-100 at 224 px is ~130,000 files). This decodes them once, class by class with a progress bar,
into ``<data_dir>/prepared/<key>/{train,test}/<class>.npy`` (uint8 [n, C, H, W] at the training
resolution) plus ``meta.json``; :func:`dream_pl.data.load_dataset` reads a prepared folder before the
raw files. Each class file is written atomically and an interrupted conversion resumes where it stopped.
Per-class files are the class-indexed layout a process of a sharded run can read its share from (plain
``.npy``, memory-mappable, random access within a class: what matching and clustering read, where
WebDataset's sequential tar shards are not; litdata's chunked format targets streaming shuffled samples
from object storage, which a per-class read does not need).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from dream_pl.data.specs import DatasetSpec

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


def write_class(folder: Path, split: str, c: int, images: torch.Tensor) -> None:
    """One class's uint8 [n, C, H, W] array, written to a temporary name and renamed (atomic)."""
    path = folder / split / f"{c:05d}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(images.numpy()))
    os.replace(tmp, path)


def class_file(folder: Path, split: str, c: int) -> Path:
    """Where class ``c`` of ``split`` lives in a prepared folder."""
    return folder / split / f"{c:05d}.npy"


def read_class(folder: Path, split: str, c: int) -> torch.Tensor:
    """Class ``c``'s images of ``split`` from a prepared folder (memory-mapped, then copied)."""
    return torch.from_numpy(np.array(np.load(class_file(folder, split, c), mmap_mode="r")))


def read_prepared(folder: Path) -> tuple[dict, list[tuple[torch.Tensor, torch.Tensor]]] | None:
    """(meta, [(train images, labels), (test images, labels)]) of a complete prepared folder, else None."""
    meta_path = folder / META
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    splits = []
    for split in ("train", "test"):
        parts = [read_class(folder, split, c) for c in range(meta["num_classes"])]
        labels = torch.cat([torch.full((len(p),), c, dtype=torch.long) for c, p in enumerate(parts)])
        splits.append((torch.cat(parts), labels))
    return meta, splits


def prepare(
    spec: DatasetSpec,
    folder: Path,
    classes: Sequence[tuple[str, Sequence, Sequence]],
    decode: Callable[[Sequence], torch.Tensor],
    *,
    progress: bool = True,
) -> Path:
    """Write every class's train and test arrays (skipping those already written), then ``meta.json``.

    ``classes``: per class, its name and its train and test items; ``decode(items) -> uint8 [n, C, H, W]``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"train": [], "test": []}
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"preparing {folder.name}", total=len(classes))
        for c, (_, train, test) in enumerate(classes):
            for split, items in (("train", train), ("test", test)):
                if not class_file(folder, split, c).is_file():
                    write_class(folder, split, c, decode(items))
                counts[split].append(int(np.load(class_file(folder, split, c), mmap_mode="r").shape[0]))
            bar.advance(task)
    meta = {
        "name": spec.name,
        "channels": spec.channels,
        "size": spec.size,
        "num_classes": len(classes),
        "classes": [str(name) for name, _, _ in classes],
        "train_counts": counts["train"],
        "test_counts": counts["test"],
    }
    tmp = folder / f".{META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder / META)
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: prepare a dataset (any known one; the ImageNet folders are where it pays)."""
    from dream_pl.data.sources import prepare_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="dataset name, e.g. imagenet, imagenet_subset, tiny_imagenet, cifar100")
    parser.add_argument("--data-dir", required=True, help="where the raw files are; prepared/ goes here")
    parser.add_argument("--size", type=int, default=None, help="side in pixels (ImageNet sets)")
    parser.add_argument("--nclass", type=int, default=None, help="imagenet: the first N classes (sorted)")
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("size", args.size), ("nclass", args.nclass)) if v is not None}
    try:
        folder = prepare_dataset(args.name, Path(args.data_dir), **options)
    except (FileNotFoundError, TypeError, ValueError, KeyError) as err:
        print(f"error: {err}")
        raise SystemExit(2) from None
    print(f"prepared: {folder}")


if __name__ == "__main__":
    main()
