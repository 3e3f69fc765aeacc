"""Where the synthetic images start: K-means centres (DREAM), random real images, or noise.

Each initialiser returns the stored images of the classes it is given (every class by default),
[len(classes) * ipc, C, H, W] in pixel space, class-major in that order: a process of a sharded run
initialises only its own classes. With factor f it picks ipc * f^2 real images per class and tiles them
f x f (IDC's multi-formation init).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dream_pl.clustering import INITS, select_representatives
from dream_pl.data import RealSet
from dream_pl.features import embed_class
from dream_pl.seeding import derive
from dream_pl.synthetic import tile


def _tile_classes(real: RealSet, picks: dict[int, Tensor], factor: int) -> Tensor:
    """Pixel images of each class's picked indices, tiled f x f, class-major in the order of ``picks``."""
    _, channels, h, w = real.images.shape
    tiles = [tile(real.to_pixels(real.images[real.class_slice(c)][idx]), factor) for c, idx in picks.items()]
    return torch.cat(tiles) if tiles else real.images.new_zeros(0, channels, h, w, dtype=torch.float32)


class KMeansInit:
    """DREAM's init: per class, the real images nearest the centres of K = ipc * f^2 K-means clusters."""

    def __init__(
        self,
        backend: str = "auto",
        max_iter: int = 100,
        kmeans_init: str = "random",
        embed_chunk: int = 512,
        features: str = "normalized",
    ) -> None:
        if kmeans_init not in INITS:
            raise ValueError(f"init.kmeans_init={kmeans_init!r} is not one of {', '.join(INITS)}")
        self.backend, self.max_iter, self.kmeans_init = backend, max_iter, kmeans_init
        self.embed_chunk, self.features = embed_chunk, features

    def __call__(
        self,
        real: RealSet,
        net: nn.Module,
        *,
        ipc: int,
        factor: int,
        seed: int,
        classes: tuple[int, ...] | None = None,
    ) -> Tensor:
        """Cluster each class (of ``classes``) and tile the images nearest the centres.

        Each class has its own seed, so a process of a sharded run initialises its classes as one process
        initialising every class would.
        """
        k = ipc * factor**2
        picks = {}
        for c in range(real.num_classes) if classes is None else classes:
            features = embed_class(net, real, c, chunk=self.embed_chunk, inputs=self.features)
            picks[c], _ = select_representatives(
                features,
                k,
                1,
                backend=self.backend,
                seed=derive(seed, "class", c),
                max_iter=self.max_iter,
                init=self.kmeans_init,
            )
        return _tile_classes(real, picks, factor)


class RandomRealInit:
    """Real images of each class, tiled f x f (IDC's multi-formation "mix" init).

    Args:
        order: ``random`` (a seeded random choice per class) or ``first`` (the first ipc * f^2 images of
            each class in dataset order: exactly IDC's picks, deterministic).

    On FashionMNIST at IPC 10, f 2, IDC's first images evaluate 2.5 to 5 points above seeded random picks
    of the same size (docs/benchmarks.md): the tiling is the same, the subset is a fortunate one.
    """

    ORDERS = ("random", "first")

    def __init__(self, order: str = "random") -> None:
        if order not in self.ORDERS:
            raise ValueError(f"init.order={order!r} is not one of {', '.join(self.ORDERS)}")
        self.order = order

    def __call__(
        self,
        real: RealSet,
        net: nn.Module,
        *,
        ipc: int,
        factor: int,
        seed: int,
        classes: tuple[int, ...] | None = None,
    ) -> Tensor:
        """Tile ``ipc * f^2`` real images per class (of ``classes``).

        Every class's pick is drawn in turn from one stream, so a class gets the same images alone or not.
        """
        del net
        k = ipc * factor**2
        if self.order == "first":
            picks = [torch.arange(k) for _ in range(real.num_classes)]
        else:
            g = torch.Generator().manual_seed(seed)
            picks = [torch.randperm(real.class_sizes[c], generator=g)[:k] for c in range(real.num_classes)]
        kept = range(real.num_classes) if classes is None else classes
        return _tile_classes(real, {c: picks[c].to(real.images.device) for c in kept}, factor)


class NoiseInit:
    """Noise around mid-grey, ``clamp(N(0.5, 0.25^2), 0, 1)`` (IDC's ``noise``)."""

    def __call__(
        self,
        real: RealSet,
        net: nn.Module,
        *,
        ipc: int,
        factor: int,
        seed: int,
        classes: tuple[int, ...] | None = None,
    ) -> Tensor:
        """Seeded noise images of ``classes`` (every class's drawn from one stream, then those kept)."""
        del net, factor
        _, c, h, w = real.images.shape
        g = torch.Generator().manual_seed(seed)
        noise = (torch.randn(real.num_classes * ipc, c, h, w, generator=g) / 4 + 0.5).view(-1, ipc, c, h, w)
        kept = list(range(real.num_classes) if classes is None else classes)
        return noise[kept].flatten(0, 1).clamp(0, 1).to(real.images.device)
