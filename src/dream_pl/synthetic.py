"""The synthetic set: learnable stored images, IDC multi-formation decoding, and its file format.

Stored images live in pixel space ([0, 1] nominally; IDC clamps only once per outer iteration). With
factor f each stored image holds an f x f grid of downsized images; decoding crops the grid and upsamples
every crop back to full size, so one stored image trains as f^2 images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.utils import save_image

from dream_pl.errors import UserError
from dream_pl.files import atomic_torch_save


class NotASyntheticSetError(UserError):
    """A file given as a synthetic set is damaged or is something else (a checkpoint, another tensor)."""


def decode(images: Tensor, factor: int) -> Tensor:
    """Multi-formation decode: [n, C, H, W] stored -> [f^2 n, C, H, W], crop-position-major.

    Crops have side ceil(H / f); when H is not divisible by f the grid is padded right/bottom with 0.5
    first (as IDC). Output order: every image's crop (0, 0), then every image's crop (0, 1), ...
    """
    if factor == 1:
        return images
    n, c, h, w = images.shape
    s = math.ceil(h / factor)
    padded = F.pad(images, (0, s * factor - w, 0, s * factor - h), value=0.5)
    # [n, c, f, s, f, s] -> [f, f, n, c, s, s]: grid row, grid col, image, channel, crop pixels
    crops = padded.view(n, c, factor, s, factor, s).permute(2, 4, 0, 1, 3, 5)
    crops = crops.reshape(factor * factor * n, c, s, s)
    return F.interpolate(crops, size=(h, w), mode="bilinear", align_corners=False)


def tile_sizes(size: int, factor: int) -> list[int]:
    """Side of each grid cell when tiling: size // f, the remainder spread as +1 on the first cells."""
    return [size // factor + (1 if i < size % factor else 0) for i in range(factor)]


def tile(images: Tensor, factor: int) -> Tensor:
    """Inverse layout of :func:`decode`: [f^2 n, C, H, W] real images -> [n, C, H, W] stored images.

    Chunk k of n images is downsized (nearest, as IDC's mix init) into grid cell k (row-major).
    """
    if factor == 1:
        return images
    total, c, h, w = images.shape
    n = total // (factor * factor)
    rows, cols = tile_sizes(h, factor), tile_sizes(w, factor)
    out = images.new_empty(n, c, h, w)
    chunks = images.view(factor * factor, n, c, h, w)
    top = 0
    for i, rh in enumerate(rows):
        left = 0
        for j, cw in enumerate(cols):
            out[:, :, top : top + rh, left : left + cw] = F.interpolate(
                chunks[i * factor + j], size=(rh, cw), mode="nearest"
            )
            left += cw
        top += rh
    return out


def decode_classes(stored: Tensor, classes: Sequence[int], ipc: int, factor: int) -> tuple[Tensor, Tensor]:
    """Stored images of ``classes`` (``ipc`` each, in that order) decoded, with their labels."""
    x = torch.cat([decode(block, factor) for block in stored.split(ipc)]) if len(stored) else stored
    y = torch.tensor(list(classes), dtype=torch.long, device=stored.device).repeat_interleave(ipc * factor**2)
    return x, y


class SyntheticSet(nn.Module):
    """``ipc`` learnable stored images for each held class (class-major) with fixed hard labels.

    ``classes``: the classes this process holds (default every class). Classes sharded over processes
    (``trainer=ddp``), each process holds and steps only its own classes' images, so the set's memory per
    process falls as 1/k; :meth:`dream_pl.distill.DistillModule.export` gathers the whole set.
    """

    def __init__(
        self, images: Tensor, num_classes: int, ipc: int, factor: int, classes: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        self.classes = tuple(range(num_classes)) if classes is None else tuple(classes)
        if images.shape[0] != len(self.classes) * ipc:
            raise ValueError(
                f"expected {len(self.classes) * ipc} stored images ({len(self.classes)} classes x ipc "
                f"{ipc}), got {images.shape[0]}"
            )
        self.num_classes, self.ipc, self.factor = num_classes, ipc, factor
        self._row = {c: i * ipc for i, c in enumerate(self.classes)}
        self.images = nn.Parameter(images.clone())
        self.register_buffer("labels", torch.tensor(self.classes, dtype=torch.long).repeat_interleave(ipc))

    def class_decoded(self, c: int) -> Tensor:
        """Decoded images of class ``c``: [ipc f^2, C, H, W], differentiable w.r.t. the stored ones."""
        if c not in self._row:
            raise KeyError(f"class {c} is not held here (held: {self.classes})")
        row = self._row[c]
        return decode(self.images[row : row + self.ipc], self.factor)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project back to the pixel range (IDC: once per outer iteration)."""
        self.images.clamp_(0.0, 1.0)


@dataclass
class SyntheticData(Dataset):
    """A saved synthetic set as a torch Dataset of (pixel-space image, label) pairs."""

    images: Tensor
    labels: Tensor
    factor: int = 1
    dataset: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    stored: Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]

    @property
    def ipc(self) -> int:
        """Stored images per class."""
        classes = int(self.labels.max()) + 1
        return len(self.labels) // (classes * self.factor**2)


def save_synthetic(path: str | Path, data: SyntheticData) -> None:
    """Write a synthetic set (decoded images in pixel space + metadata) atomically."""
    atomic_torch_save(
        {
            "images": data.images.detach().cpu(),
            "labels": data.labels.cpu(),
            "factor": data.factor,
            "dataset": data.dataset,
            "mean": tuple(data.mean),
            "std": tuple(data.std),
            "stored": None if data.stored is None else data.stored.detach().cpu(),
            "config": data.config,
        },
        path,
    )


def load_synthetic(path: str | Path) -> SyntheticData:
    """Read a file written by :func:`save_synthetic` (a run directory's ``synthetic.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "synthetic.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no synthetic set at {path} (expected a synthetic.pt or a run directory)")
    checkpoint = NotASyntheticSetError(
        f"{path} is a training checkpoint, not a synthetic set; its run folder holds the set exported "
        "with it: pass synthetic=<run folder> (its synthetic.pt)"
    )
    if path.suffix == ".ckpt":
        raise checkpoint
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign files: every reader error means "not a set"
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise NotASyntheticSetError(
            f"{path} cannot be read ({reason}); a distillation run writes its synthetic.pt again when "
            "resumed (the same command, or out_dir=<its folder>)"
        ) from None
    if isinstance(blob, dict) and "state_dict" in blob:
        raise checkpoint
    wanted = {f.name for f in fields(SyntheticData)}
    if not isinstance(blob, dict) or not {"images", "labels"} <= blob.keys() or not blob.keys() <= wanted:
        got = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise NotASyntheticSetError(
            f"{path} is not a synthetic set (it holds {got}; a set has {', '.join(sorted(wanted))})"
        )
    return SyntheticData(**blob)


def save_grid(path: str | Path, images: Tensor, labels: Tensor, *, max_per_class: int = 10) -> None:
    """PNG grid of pixel-space images: one row per class, at most ``max_per_class`` images each."""
    rows = [images[labels == c][:max_per_class] for c in labels.unique(sorted=True)]
    ncol = max(len(r) for r in rows)
    cells = [torch.cat([r, r.new_ones(ncol - len(r), *r.shape[1:])]) for r in rows]
    save_image(torch.cat(cells).clamp(0, 1).float().cpu(), str(path), nrow=ncol, padding=1)
