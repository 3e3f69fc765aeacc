"""Your own images as a dataset (``dataset=folder``): an ImageFolder-style tree, listed, checked and decoded.

``<root>/train/<class>/<images>`` is the training split and ``<root>/val/<class>/`` or
``<root>/test/<class>/`` the test split; the classes are the sorted names of ``train/``'s sub-folders, as
torchvision's ``ImageFolder`` numbers them. Listing the tree opens no image, so the config's pre-check learns
the classes and every class's size in moments and refuses a bad tree (one line naming the path) before any
image is decoded. Decoding resizes each image's shorter side to ``size``, centre-crops it square and converts
it to ``channels`` (1: PIL's "L" luminance, 3: RGB, a grey image repeated), as the ImageNet readers do; it
happens when the data loads, or once with ``python -m dream_pl.data.prepare folder``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from dream_pl.errors import UserError

FOLDER = "folder"  # the dataset's name (dataset=folder)
TEST_SPLITS = ("val", "test")  # the sub-folders that may hold the test split, in the order looked for
CHANNELS = (1, 3)
FOLDER_DEFAULTS: dict[str, object] = {"root": None, "size": 32, "channels": 3, "test_split": None}
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})  # PIL modes without colour
_LAYOUT = "<root>/train/<class>/<images> and <root>/val/<class>/ (or <root>/test/<class>/)"
_LISTED = 5  # class names quoted in a refusal before "..."


class FolderDatasetError(UserError, ValueError):
    """A folder dataset's options or tree that cannot be used; the message names the path and what is allowed.

    A ``ValueError`` too, so the prepare command reports it in one line like its other refusals.
    """


@dataclass(frozen=True)
class FolderOptions:
    """``dataset.options`` of ``dataset=folder``, checked, with the defaults filled in."""

    root: Path
    size: int
    channels: int
    test_split: str | None


@dataclass(frozen=True)
class FolderLayout:
    """A listed tree: the class names (sorted) and each class's image files in either split."""

    root: Path
    test_split: str
    classes: tuple[str, ...]
    train: tuple[tuple[Path, ...], ...]
    test: tuple[tuple[Path, ...], ...]

    @property
    def class_sizes(self) -> list[int]:
        """Training images per class, in class order."""
        return [len(files) for files in self.train]

    def smallest(self) -> tuple[Path, int]:
        """The smallest training class's folder and its image count (the first such class on a tie)."""
        sizes = self.class_sizes
        c = sizes.index(min(sizes))
        return self.root / "train" / self.classes[c], sizes[c]

    def digest(self) -> str:
        """A short digest of every file's split, class, path and byte size: what the decoded images are.

        It names a prepared copy, so adding, removing or replacing an image makes the next load decode the
        tree again instead of reading a stale copy.
        """
        h = hashlib.blake2b(digest_size=4)
        for split, per_class in (("train", self.train), (self.test_split, self.test)):
            for name, files in zip(self.classes, per_class, strict=True):
                for path in files:
                    relative = path.relative_to(self.root / split / name)
                    h.update(f"{split}/{name}/{relative}\t{path.stat().st_size}\n".encode())
        return h.hexdigest()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def folder_options(options: Mapping[str, object]) -> FolderOptions:
    """Check ``dataset.options`` of a folder dataset and fill in the defaults (size 32, 3 channels)."""
    if unknown := sorted(set(options) - set(FOLDER_DEFAULTS)):
        raise FolderDatasetError(
            f"dataset.options.{unknown[0]} is not an option of dataset=folder; allowed: "
            f"{', '.join(FOLDER_DEFAULTS)}"
        )
    given = {**FOLDER_DEFAULTS, **options}
    root, size, channels, split = (given[k] for k in ("root", "size", "channels", "test_split"))
    if root is None or root == "":
        raise FolderDatasetError(
            "dataset=folder needs dataset.options.root=<path> (prepare: --root <path>): the folder holding "
            f"{_LAYOUT}"
        )
    if not _is_int(size) or size < 1:
        raise FolderDatasetError(
            f"dataset.options.size={size!r} must be an integer >= 1 (the side in pixels)"
        )
    if not _is_int(channels) or channels not in CHANNELS:
        raise FolderDatasetError(
            f"dataset.options.channels={channels!r} is not allowed; allowed: 1 (greyscale), 3 (colour)"
        )
    if split is not None and split not in TEST_SPLITS:
        raise FolderDatasetError(
            f"dataset.options.test_split={split!r} is not allowed; allowed: null (the one present), "
            f"{', '.join(TEST_SPLITS)}"
        )
    return FolderOptions(Path(str(root)).expanduser(), size, channels, split)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _class_folders(split: Path) -> list[str]:
    return sorted(p.name for p in split.iterdir() if _visible(p.name) and p.is_dir())


def _images(folder: Path) -> tuple[Path, ...]:
    """A class folder's image files, its sub-folders included (as ``ImageFolder``), in sorted order."""
    found: list[Path] = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        found += [
            Path(parent) / f for f in sorted(files) if _visible(f) and f.lower().endswith(IMG_EXTENSIONS)
        ]
    return tuple(found)


def _quoted(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LISTED else "")


def _test_split(root: Path, chosen: str | None) -> str:
    present = [s for s in TEST_SPLITS if (root / s).is_dir()]
    if chosen is not None:
        if chosen not in present:
            allowed = ", ".join(present) or f"none: {root} has neither val/ nor test/"
            raise FolderDatasetError(
                f"dataset.options.test_split={chosen}: {root / chosen} is not a folder; allowed: {allowed}"
            )
        return chosen
    if not present:
        raise FolderDatasetError(
            f"{root} has neither val/ nor test/ (the test split); allowed layout: {_LAYOUT}"
        )
    if len(present) > 1:
        raise FolderDatasetError(
            f"{root} has both val/ and test/; say which is the test split: dataset.options.test_split=val or "
            "dataset.options.test_split=test"
        )
    return present[0]


def scan(options: FolderOptions) -> FolderLayout:
    """List the tree (no image is opened) and refuse what cannot be a dataset, in one line naming the path."""
    root = options.root
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise FolderDatasetError(f"dataset.options.root={root} {what}; give the folder holding {_LAYOUT}")
    if not (root / "train").is_dir():
        raise FolderDatasetError(f"{root} has no train/ folder; allowed layout: {_LAYOUT}")
    split = _test_split(root, options.test_split)
    classes = _class_folders(root / "train")
    if len(classes) < 2:
        found = f" ({_quoted(classes)})" if classes else ""
        raise FolderDatasetError(
            f"{root / 'train'} has {len(classes)} class folder(s){found}; allowed: 2 or more, one sub-folder "
            "of images per class (images directly in train/ are not read)"
        )
    held = _class_folders(root / split)
    if held != classes:
        missing, extra = sorted(set(classes) - set(held)), sorted(set(held) - set(classes))
        said = "; ".join(
            f"{what} {_quoted(names)}" for what, names in (("missing", missing), ("extra", extra)) if names
        )
        raise FolderDatasetError(
            f"{root / split} has other class folders than {root / 'train'} ({said}); allowed: the same "
            f"{len(classes)} class folders"
        )
    listed = {s: tuple(_images(root / s / name) for name in classes) for s in ("train", split)}
    for s in ("train", split):
        for name, files in zip(classes, listed[s], strict=True):
            if not files:
                raise FolderDatasetError(
                    f"{root / s / name} holds no images; allowed: files ending in {', '.join(IMG_EXTENSIONS)}"
                )
    return FolderLayout(root, split, tuple(classes), listed["train"], listed[split])


def resize_crop(size: int) -> transforms.Compose:
    """Shorter side to ``size``, then a centre crop, kept as uint8 [C, size, size] (as the ImageNet readers).

    An image already ``size`` x ``size`` passes unchanged (PIL returns a copy for a same-size resize).
    """
    return transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
    )


def decode_images(paths: Sequence[Path], size: int, channels: int, modes: set[str] | None = None) -> Tensor:
    """Decode image files into uint8 [n, channels, size, size]; ``modes`` collects their PIL modes.

    Raises:
        FolderDatasetError: a file PIL cannot read (named), e.g. a truncated JPEG or a text file renamed.
    """
    transform = resize_crop(size)
    out = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                if modes is not None:
                    modes.add(img.mode)
                out[i] = transform(img.convert("L" if channels == 1 else "RGB"))
        except Exception as err:  # any decoder error: the file is not a readable image
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            raise FolderDatasetError(
                f"{path} cannot be read as an image ({reason}); allowed: image files PIL can decode, ending "
                f"in {', '.join(IMG_EXTENSIONS)}"
            ) from None
    return out


def all_grey(modes: set[str]) -> bool:
    """Whether every decoded image was greyscale (then ``channels=1`` stores the same pixels in a third)."""
    return bool(modes) and modes <= GREY_MODES
