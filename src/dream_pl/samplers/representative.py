"""DREAM's representative sampler: match against the images nearest K-means sub-cluster centres."""

from __future__ import annotations

from torch import Tensor

from dream_pl.clustering import select_representatives
from dream_pl.samplers.base import SelectionSampler


class RepresentativeSampler(SelectionSampler):
    """N sub-clusters per class, the n images nearest each centre: a batch of N x n (paper: 128 x 1).

    Args:
        n_clusters: N, the K of the per-class K-means.
        n_per_cluster: n, images taken nearest each centre.
        interval: I_int, inner steps between clustering events.
        backend: K-means backend (``auto``, ``faiss``, ``torch``).
        max_iter: Lloyd iterations.
        embed_subset: embed only a random subset of this many images per class (speed option).
        embed_chunk: images per embedding forward pass.
    """

    def __init__(
        self,
        n_clusters: int = 128,
        n_per_cluster: int = 1,
        interval: int = 10,
        backend: str = "auto",
        max_iter: int = 100,
        embed_subset: int | None = None,
        embed_chunk: int = 512,
    ) -> None:
        super().__init__(interval=interval, embed_subset=embed_subset, embed_chunk=embed_chunk)
        if n_clusters < 1 or n_per_cluster < 1:
            raise ValueError(
                f"sampler.n_clusters={n_clusters} and n_per_cluster={n_per_cluster} must be >= 1"
            )
        self.n_clusters, self.n_per_cluster = n_clusters, n_per_cluster
        self.backend, self.max_iter = backend, max_iter

    def batch_size(self) -> int:
        """N x n."""
        return self.n_clusters * self.n_per_cluster

    def select(self, features: Tensor, *, seed: int) -> Tensor:
        """K-means with N centres, then the n nearest images of each centre."""
        return select_representatives(
            features,
            self.n_clusters,
            self.n_per_cluster,
            backend=self.backend,
            seed=seed,
            max_iter=self.max_iter,
        )
