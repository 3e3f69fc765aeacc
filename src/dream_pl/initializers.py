"""Where the synthetic images start: K-means centres (DREAM), random real images, or noise.

Each initialiser returns stored images [num_classes * ipc, C, H, W] in pixel space; with factor f it
picks ipc * f^2 real images per class and tiles them f x f (IDC's multi-formation init).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dream_pl.clustering import select_representatives
from dream_pl.data import RealSet
from dream_pl.features import embed_class
from dream_pl.seeding import derive
from dream_pl.synthetic import tile


def _tile_classes(real: RealSet, picks: list[Tensor], factor: int) -> Tensor:
    """Pixel images of each class's picked indices, tiled f x f, class-major."""
    stored = [
        tile(real.to_pixels(real.images[real.class_slice(c)][idx]), factor) for c, idx in enumerate(picks)
    ]
    return torch.cat(stored)


class KMeansInit:
    """DREAM's init: per class, the real images nearest the centres of K = ipc * f^2 K-means clusters."""

    def __init__(self, backend: str = "auto", max_iter: int = 100, embed_chunk: int = 512) -> None:
        self.backend, self.max_iter, self.embed_chunk = backend, max_iter, embed_chunk

    def __call__(self, real: RealSet, net: nn.Module, *, ipc: int, factor: int, seed: int) -> Tensor:
        """Cluster each class on ``net``'s features and tile the images nearest the centres."""
        k = ipc * factor**2
        picks = []
        for c in range(real.num_classes):
            features = embed_class(net, real, c, chunk=self.embed_chunk)
            picks.append(
                select_representatives(
                    features,
                    k,
                    1,
                    backend=self.backend,
                    seed=derive(seed, "class", c),
                    max_iter=self.max_iter,
                )
            )
        return _tile_classes(real, picks, factor)


class RandomRealInit:
    """Random real images of each class (seeded; IDC takes the first ones in dataset order)."""

    def __call__(self, real: RealSet, net: nn.Module, *, ipc: int, factor: int, seed: int) -> Tensor:
        """Tile ``ipc * f^2`` random real images per class."""
        del net
        g = torch.Generator().manual_seed(seed)
        picks = [
            torch.randperm(real.class_sizes[c], generator=g)[: ipc * factor**2]
            for c in range(real.num_classes)
        ]
        return _tile_classes(real, [p.to(real.images.device) for p in picks], factor)


class NoiseInit:
    """Noise around mid-grey, ``clamp(N(0.5, 0.25^2), 0, 1)`` (IDC's ``noise``)."""

    def __call__(self, real: RealSet, net: nn.Module, *, ipc: int, factor: int, seed: int) -> Tensor:
        """Seeded noise images."""
        del net, factor
        _, c, h, w = real.images.shape
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(real.num_classes * ipc, c, h, w, generator=g) / 4 + 0.5
        return noise.clamp(0, 1).to(real.images.device)
