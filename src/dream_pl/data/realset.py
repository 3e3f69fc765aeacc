"""The real training set, held once as uint8 on the device and grouped by class.

Gradient matching draws class-wise real batches every inner step, so the set lives on the device.
The reference keeps three float32 copies there; here one uint8 copy, sorted by class so that a
class is a contiguous slice, is normalised on the fly: a twelfth of the memory.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from dream_pl.data.sources import RealData


def draw_indices(size: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` indices into ``range(size)``: without replacement if possible, else with.

    Classes smaller than the requested batch (tiny IPC-scale subsets) must still yield ``n``
    images, hence the fallback to replacement.
    """
    device = generator.device if generator is not None else "cpu"
    if n <= size:
        return torch.randperm(size, generator=generator, device=device)[:n]
    return torch.randint(size, (n,), generator=generator, device=device)


class RealSet:
    """Per-class real images as one sorted uint8 tensor, normalised when read.

    Args:
        images: uint8 [N, C, H, W] pixels.
        labels: [N] class indices 0..K-1.
        mean: Per-channel mean of pixels in [0, 1].
        std: Per-channel standard deviation of pixels in [0, 1].
        device: Where the single uint8 copy lives.
        num_classes: K, when the largest class may be absent from ``labels``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        num_classes: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"Expected uint8 [N, C, H, W] images, got {images.dtype} {images.shape}")
        labels = labels.cpu().long()
        if bool((labels[1:] >= labels[:-1]).all()):  # already class-sorted (a prepared, memory-mapped set)
            self.images, self.labels = images.cpu().to(device), labels.to(device)  # no copy on the CPU
        else:
            order = torch.argsort(labels, stable=True)
            self.images = images.cpu()[order].to(device)  # [N, C, H, W] uint8, sorted by class
            self.labels = labels[order].to(device)  # [N]
        counts = torch.bincount(self.labels.cpu(), minlength=num_classes or 0)  # [K]
        self._sizes: list[int] = counts.tolist()
        self._offsets: list[int] = [0, *counts.cumsum(0).tolist()]  # where each class starts, globally
        self._starts: list[int] = self._offsets[:-1]  # ... and in ``images`` (-1: not held, see keep)
        self.held: tuple[int, ...] = tuple(range(len(self._sizes)))
        self._index_maps()
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def _index_maps(self) -> None:
        """Device tensors that turn a global index into its class and its row in ``images``."""
        device = self.images.device
        self._bounds = torch.tensor(self._offsets[1:], device=device)  # class of i: bucketize(i, bounds)
        shift = torch.zeros(len(self._sizes), dtype=torch.long)
        held = torch.zeros(len(self._sizes), dtype=torch.bool)
        for c in self.held:
            shift[c], held[c] = self._starts[c] - self._offsets[c], True
        self._shift, self._held_mask = shift.to(device), held.to(device)

    def keep(self, classes: Sequence[int]) -> RealSet:
        """A set holding only ``classes``' images (a process's share in a sharded run); sizes stay global.

        Matching, clustering and initialisation read held classes only; a random batch over the whole set
        (:meth:`sample`) gets zero rows for the other classes, which their holders fill (sum over processes).
        """
        kept = copy.copy(self)
        kept.held = tuple(sorted(classes))
        parts = [self.class_slice(c) for c in kept.held]
        kept.images = torch.cat([self.images[part] for part in parts]) if parts else self.images[:0]
        kept.labels = torch.cat([self.labels[part] for part in parts]) if parts else self.labels[:0]
        kept._starts, start = [-1] * len(self._sizes), 0
        for c in kept.held:
            kept._starts[c], start = start, start + self._sizes[c]
        kept._index_maps()
        return kept

    @property
    def complete(self) -> bool:
        """Whether every class's images are held here."""
        return len(self.held) == len(self._sizes)

    @classmethod
    def from_data(cls, data: RealData, split: str = "train", device: str | torch.device = "cpu") -> RealSet:
        """Build from a loaded dataset's ``"train"`` or ``"test"`` split."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        return cls(images, labels, data.spec.mean, data.spec.std, device, data.spec.num_classes)

    def __len__(self) -> int:
        """Images of the whole set (of every class, held here or not)."""
        return self._offsets[-1]

    def to(self, device: str | torch.device) -> RealSet:
        """Move storage and statistics to ``device`` in place (the uint8 copy stays the only one)."""
        for name in ("images", "labels", "mean", "std", "_bounds", "_shift", "_held_mask"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self._sizes)

    @property
    def class_sizes(self) -> list[int]:
        """Images per class, indexed by class."""
        return list(self._sizes)

    def class_slice(self, c: int) -> slice:
        """Where class ``c`` sits in the sorted storage (``images``)."""
        if self._starts[c] < 0:  # O(1): called per class in every step
            raise ValueError(f"class {c} is not held by this process; it holds {list(self.held)}")
        return slice(self._starts[c], self._starts[c] + self._sizes[c])

    def to_pixels(self, x: Tensor) -> Tensor:
        """uint8 pixels -> float in [0, 1] on the set's device."""
        return x.to(self.mean.device, torch.float32) / 255.0

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 pixels, or floats in [0, 1], -> (x - mean) / std."""
        pixels = self.to_pixels(x) if x.dtype == torch.uint8 else x.to(self.mean.device)
        return (pixels - self.mean) / self.std

    def get(self, index: Tensor) -> Tensor:
        """Normalised float [n, C, H, W] images at global indices of the sorted storage."""
        return self.normalize(self.images[index.to(self.images.device)])

    def class_images(self, c: int, idx: Tensor | None = None) -> Tensor:
        """Normalised images of class ``c``: all, or those at indices ``idx`` within the class."""
        block = self.images[self.class_slice(c)]  # a view, no copy
        if idx is not None:
            block = block[idx.to(block.device)]
        return self.normalize(block)

    def sample_class(self, c: int, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` random indices within class ``c`` (see `draw_indices`)."""
        return draw_indices(self._sizes[c], n, generator)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` normalised images and their labels drawn uniformly from the whole set.

        Used for the matching network's own updates, which see all classes mixed. Images of classes not
        held here (:meth:`keep`) are zero rows: the sum over the processes that hold them is the batch.
        """
        index = draw_indices(len(self), n, generator).to(self.images.device)
        if self.complete:
            return self.get(index), self.labels[index]
        label = torch.bucketize(index, self._bounds, right=True)
        held = self._held_mask[label]
        if not self.held:  # more processes than classes: this one holds none
            return self.normalize(self.images.new_zeros(n, *self.images.shape[1:])) * 0, label
        rows = torch.where(held, index + self._shift[label], 0)
        return self.get(rows) * held.view(-1, 1, 1, 1), label
