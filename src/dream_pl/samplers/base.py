"""Sampler interface: a matching batch per class, optionally refreshed from the network's features."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from dream_pl.data import RealSet
from dream_pl.features import FEATURE_INPUTS, embed_class
from dream_pl.seeding import derive, generator


class Sampler(ABC):
    """Gives, for class ``c``, the within-class indices of the real batch to match against.

    ``selects`` says whether the sampler holds a selection that :meth:`refresh` recomputes; when to
    refresh is decided by the engine alone (every ``sampler.interval`` inner steps).
    """

    selects: bool = False

    @property
    def ready(self) -> bool:
        """Whether :meth:`indices` can answer (a selecting sampler needs a first :meth:`refresh`)."""
        return True

    @abstractmethod
    def indices(self, real: RealSet, c: int, generator: torch.Generator) -> Tensor:
        """Within-class indices of class ``c``'s next matching batch."""

    def refresh(
        self, net: nn.Module, real: RealSet, *, seed: int, classes: list[int] | None = None
    ) -> dict[str, float]:
        """Recompute any selection from the current network (``seed``: this event's); returns stats to log.

        ``classes``: only these (a process's share when classes are sharded); default all.
        """
        del net, real, seed, classes
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Selection state for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        del state

    def to(self, device: torch.device) -> None:
        """Move any held selection to ``device``."""
        del device

    def owned(self, classes: tuple[int, ...]) -> dict[int, Tensor]:
        """The selections of ``classes`` (what this process refreshed when classes are sharded)."""
        del classes
        return {}

    def adopt(self, num_classes: int, selections: dict[int, Tensor]) -> None:
        """Take other processes' selections, so every process holds every class's (checkpoints need it)."""
        del num_classes, selections


class SelectionSampler(Sampler):
    """A sampler holding a fixed selection per class between refreshes.

    Subclasses implement :meth:`select` on one class's features; embedding (optionally of a random
    subset of each class), bookkeeping and the selection-quality statistics live here.

    Args:
        embed_subset: embed only a seeded random subset of this many images per class (speed option).
        embed_chunk: images per embedding forward pass.
        features: what the network embeds, ``normalized`` images (as matched) or raw ``pixels``.
    """

    selects = True

    def __init__(
        self, *, embed_subset: int | None = None, embed_chunk: int = 512, features: str = "normalized"
    ) -> None:
        if features not in FEATURE_INPUTS:
            raise ValueError(f"unknown features {features!r}; allowed: {', '.join(FEATURE_INPUTS)}")
        self.embed_subset, self.embed_chunk, self.features = embed_subset, embed_chunk, features
        self.selection: list[Tensor] = []

    @property
    def ready(self) -> bool:
        """Whether a selection is held (made by :meth:`refresh` or restored from a checkpoint)."""
        return bool(self.selection)

    @abstractmethod
    def select(self, features: Tensor, *, seed: int) -> tuple[Tensor, dict[str, float]]:
        """Indices (into ``features``' rows) of the matching batch, and per-class statistics to log."""

    def indices(self, real: RealSet, c: int, generator: torch.Generator) -> Tensor:
        """The class's current selection (a fixed batch until the next refresh)."""
        del generator
        if not self.selection:
            raise RuntimeError(f"{type(self).__name__}.refresh() must run before the first match")
        return self.selection[c]

    def candidates(self, real: RealSet, c: int, seed: int) -> Tensor | None:
        """Within-class indices to embed: a seeded random subset, or None for the whole class."""
        size = real.class_sizes[c]
        if self.embed_subset is None or self.embed_subset >= size:
            return None
        g = generator(seed, "embed_subset", c)
        return torch.randperm(size, generator=g)[: self.embed_subset].to(real.images.device)

    def embed(self, net: nn.Module, real: RealSet, c: int, candidates: Tensor | None) -> Tensor:
        """Features of class ``c``'s candidates (all its images when ``candidates`` is None)."""
        return embed_class(net, real, c, indices=candidates, chunk=self.embed_chunk, inputs=self.features)

    def refresh(
        self, net: nn.Module, real: RealSet, *, seed: int, classes: list[int] | None = None
    ) -> dict[str, float]:
        """Embed every class (of ``classes``), select its batch; returns the classes' mean statistics."""
        stats = []
        for c in range(real.num_classes) if classes is None else classes:
            cand = self.candidates(real, c, seed)
            features = self.embed(net, real, c, cand)
            chosen, extra = self.select(features, seed=derive(seed, "select", c))
            stats.append(extra | selection_quality(features, chosen))
            chosen = chosen.to(real.images.device)
            self.store(real.num_classes, c, chosen if cand is None else cand[chosen])
        return mean_stats(stats)

    def store(self, num_classes: int, c: int, indices: Tensor) -> None:
        """Set class ``c``'s selection (the list grows to ``num_classes`` entries on first use)."""
        if len(self.selection) < num_classes:
            self.selection += [torch.empty(0, dtype=torch.long)] * (num_classes - len(self.selection))
        self.selection[c] = indices

    def state_dict(self) -> dict[str, Any]:
        """The current per-class selection."""
        return {"selection": [s.cpu() for s in self.selection]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the per-class selection (moved to the real set's device at first use)."""
        self.selection = list(state.get("selection", []))

    def to(self, device: torch.device) -> None:
        """Move the selection to ``device``."""
        self.selection = [s.to(device) for s in self.selection]

    def owned(self, classes: tuple[int, ...]) -> dict[int, Tensor]:
        """The selections of ``classes``, on the CPU (to be sent to the other processes)."""
        return {c: self.selection[c].cpu() for c in classes}

    def adopt(self, num_classes: int, selections: dict[int, Tensor]) -> None:
        """Store every class's selection received from the processes that made it."""
        for c, indices in selections.items():
            self.store(num_classes, c, indices)


def selection_quality(features: Tensor, chosen: Tensor) -> dict[str, float]:
    """How central a class's selection is in feature space (cheap: the features are at hand).

    ``centroid_dist_selected``: mean Euclidean distance of the selected rows to the class centroid;
    ``centroid_dist_class``: the same over all rows; ``centroid_dist_ratio``: their ratio, < 1 when the
    selection is more central than the class on average (a uniform random batch has ~1).
    """
    dist = (features - features.mean(0)).norm(dim=1)
    selected, whole = float(dist[chosen].mean()), float(dist.mean())
    return {
        "centroid_dist_selected": selected,
        "centroid_dist_class": whole,
        "centroid_dist_ratio": selected / whole if whole > 0 else 1.0,
    }


def batched_selection_quality(xs: Tensor, mask: Tensor, chosen: Tensor) -> list[dict[str, float]]:
    """:func:`selection_quality` of several classes, read back to the host in one transfer.

    xs: [C, M, D] features padded per class, mask: [C, M] their valid rows, chosen: [C, B] selections.
    """
    count = mask.sum(1, keepdim=True).to(xs.dtype)  # [C, 1]
    centroid = (xs * mask[..., None]).sum(1, keepdim=True) / count[..., None]
    dist = (xs - centroid).norm(dim=2)  # [C, M]
    whole = (dist * mask).sum(1) / count[:, 0]
    selected = dist.gather(1, chosen).mean(1)
    ratio = torch.where(whole > 0, selected / whole, torch.ones_like(whole))
    values = torch.stack([selected, whole, ratio], 1).tolist()
    keys = ("centroid_dist_selected", "centroid_dist_class", "centroid_dist_ratio")
    return [dict(zip(keys, row, strict=True)) for row in values]


def mean_stats(per_class: list[dict[str, float]]) -> dict[str, float]:
    """Each statistic averaged over the classes that report it."""
    keys = dict.fromkeys(k for stats in per_class for k in stats)
    return {k: sum(s[k] for s in per_class if k in s) / sum(k in s for s in per_class) for k in keys}
