"""DREAM's representative sampler: match against the images nearest K-means sub-cluster centres."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dream_pl.clustering import (
    INITS,
    batched_kmeans,
    batched_nearest_to_centres,
    resolve_backend,
    select_representatives,
)
from dream_pl.data import RealSet
from dream_pl.samplers.base import SelectionSampler, batched_selection_quality, mean_stats
from dream_pl.seeding import derive

BATCH_ELEMENTS = 2**28  # padded features clustered together: 1 GiB of float32 per class group


class RepresentativeSampler(SelectionSampler):
    """N sub-clusters per class, the n images nearest each centre: a batch of N x n (paper: 128 x 1).

    Args:
        n_clusters: N, the K of the per-class K-means.
        n_per_cluster: n, images taken nearest each centre.
        backend: K-means backend (``auto``, ``faiss``, ``torch``).
        max_iter: Lloyd iterations.
        kmeans_init: ``random`` (uniform random data points, the authors' choice) or ``kmeans++``.
        embed_subset: embed only a random subset of this many images per class (speed option).
        embed_chunk: images per embedding forward pass.
        features: what the network embeds, ``normalized`` images or raw ``pixels`` (the authors').
    """

    def __init__(
        self,
        n_clusters: int,
        n_per_cluster: int = 1,
        backend: str = "auto",
        max_iter: int = 100,
        kmeans_init: str = "random",
        embed_subset: int | None = None,
        embed_chunk: int = 512,
        features: str = "normalized",
    ) -> None:
        super().__init__(embed_subset=embed_subset, embed_chunk=embed_chunk, features=features)
        if n_clusters < 1 or n_per_cluster < 1:
            raise ValueError(
                f"sampler.n_clusters={n_clusters} and n_per_cluster={n_per_cluster} must be >= 1"
            )
        if kmeans_init not in INITS:
            raise ValueError(f"sampler.kmeans_init={kmeans_init!r} is not one of {', '.join(INITS)}")
        self.n_clusters, self.n_per_cluster = n_clusters, n_per_cluster
        self.backend, self.max_iter, self.kmeans_init = backend, max_iter, kmeans_init

    def select(self, features: Tensor, *, seed: int) -> tuple[Tensor, dict[str, float]]:
        """K-means with N centres, then the n nearest images of each centre."""
        chosen, iterations = select_representatives(
            features,
            self.n_clusters,
            self.n_per_cluster,
            backend=self.backend,
            seed=seed,
            max_iter=self.max_iter,
            init=self.kmeans_init,
        )
        return chosen, {"lloyd_iterations": float(iterations)}

    def refresh(
        self, net: nn.Module, real: RealSet, *, seed: int, classes: list[int] | None = None
    ) -> dict[str, float]:
        """Per-class faiss K-means, or the torch backend on all classes at once (grouped to bound memory)."""
        probe = real.images[:1].float()
        if resolve_backend(self.backend, probe) == "faiss":
            return super().refresh(net, real, seed=seed, classes=classes)
        classes = list(range(real.num_classes)) if classes is None else classes
        cands = [self.candidates(real, c, seed) for c in classes]
        feats = [self.embed(net, real, c, cand) for c, cand in zip(classes, cands, strict=True)]
        stats: list[dict[str, float]] = []
        for group in _class_groups([f.shape for f in feats]):
            xs, mask = _pad([feats[i] for i in group]), _mask([len(feats[i]) for i in group], probe.device)
            results = batched_kmeans(
                xs,
                self.n_clusters,
                mask=mask,
                max_iter=self.max_iter,
                seeds=[derive(seed, "select", classes[i]) for i in group],
                init=self.kmeans_init,
            )
            centroids = torch.stack([r.centroids for r in results])
            chosen = batched_nearest_to_centres(xs, centroids, self.n_per_cluster, mask).flatten(1)
            quality = batched_selection_quality(xs, mask, chosen)
            for row, (i, result) in enumerate(zip(group, results, strict=True)):
                stats.append({"lloyd_iterations": float(result.iterations)} | quality[row])
                picked = chosen[row]
                self.store(real.num_classes, classes[i], picked if cands[i] is None else cands[i][picked])
        return mean_stats(stats)


def _class_groups(shapes: list[torch.Size]) -> list[list[int]]:
    """Consecutive classes whose padded features stay within :data:`BATCH_ELEMENTS`."""
    groups: list[list[int]] = [[]]
    widest = 0
    for c, (m, d) in enumerate(shapes):
        widest_if_added = max(widest, m)
        if groups[-1] and (len(groups[-1]) + 1) * widest_if_added * d > BATCH_ELEMENTS:
            groups.append([])
            widest_if_added = m
        groups[-1].append(c)
        widest = widest_if_added
    return groups


def _pad(feats: list[Tensor]) -> Tensor:
    """[G, M_max, D] with zero rows past each class's end (masked out of K-means)."""
    out = feats[0].new_zeros(len(feats), max(len(f) for f in feats), feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, : len(f)] = f
    return out


def _mask(sizes: list[int], device: torch.device) -> Tensor:
    """[G, M_max] True on each class's real rows."""
    return torch.arange(max(sizes), device=device)[None] < torch.tensor(sizes, device=device)[:, None]
