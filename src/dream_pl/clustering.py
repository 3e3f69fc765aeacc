"""K-means and nearest-to-centre selection of DREAM's representative real samples.

The reference K-means had no seed, collapsed empty clusters to the origin and could pick one sample
for two centres; here a local ``torch.Generator`` seeds every run (the global RNG is untouched),
empty clusters split the largest one and representatives are unique by default. As in faiss
``contrib/clustering`` one Lloyd loop is written (batched over classes; one class is a batch of
one); the faiss backend runs faiss's own loop from the same seeded initial centroids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "faiss", "torch")
INITS = ("random", "kmeans++")
CHUNK_ELEMENTS = 1 << 24  # bound on the [C, rows, K] distance block held at once

# faiss logs, at INFO, each SIMD build it fails to load before the one it uses: alarming and not actionable
logging.getLogger("faiss.loader").setLevel(logging.WARNING)


@dataclass
class KMeansResult:
    """One clustering: ``objective[i]`` is the inertia after ``i`` centroid updates."""

    centroids: Tensor  # [K, D]
    assign: Tensor  # [M] int64, index of the nearest centroid
    objective: list[float]  # sum of squared distances, iterations + 1 entries
    iterations: int


def pairwise_sq_dists(x: Tensor, c: Tensor, x_sq: Tensor | None = None) -> Tensor:
    """||x||² − 2 x cᵀ + ||c||² ≥ 0: one bmm, no [C, M, K, D] difference tensor.

    x: [C, M, D], c: [C, K, D] -> [C, M, K]; pass x_sq: [C, M] when x meets many centres.
    """
    x_sq = x.pow(2).sum(-1) if x_sq is None else x_sq
    c_sq = c.pow(2).sum(-1).unsqueeze(1)  # [C, 1, K]
    return torch.baddbmm(c_sq, x, c.transpose(1, 2), alpha=-2).add_(x_sq[..., None]).clamp_min_(0)


def _row_chunks(c: int, m: int, k: int) -> list[slice]:
    rows = max(1, CHUNK_ELEMENTS // (c * k))
    return [slice(s, min(s + rows, m)) for s in range(0, m, rows)]


def _assign(x: Tensor, c: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centroid (first on ties) and its squared distance (0 on padding) per row."""
    parts = [pairwise_sq_dists(x[:, s], c).min(-1) for s in _row_chunks(*x.shape[:2], c.shape[1])]
    d = torch.cat([p.values for p in parts], 1) * mask
    return torch.cat([p.indices for p in parts], 1), d


def _repair_empty(assign: Tensor, d: Tensor, mask: Tensor, k: int) -> Tensor:
    """Split the largest cluster into each empty one, so no centroid is undefined.

    In index order, each empty cluster takes the point of the currently largest cluster that is
    farthest from its centroid (first on ties): deterministic, and never the origin.
    """
    assign = assign.clone()
    counts = torch.zeros(assign.shape[0], k, dtype=torch.long, device=assign.device)
    counts.scatter_add_(1, assign, mask.long())
    for _ in range(k):
        need = (counts == 0).any(1)
        if not bool(need.any()):
            break
        rows = need.nonzero().squeeze(1)
        empty = (counts[rows] == 0).int().argmax(1)
        donor = counts[rows].argmax(1)
        in_donor = (assign[rows] == donor[:, None]) & mask[rows]
        far = d[rows].masked_fill(~in_donor, -1).argmax(1)
        assign[rows, far] = empty
        counts[rows, empty] += 1
        counts[rows, donor] -= 1
    return assign


def _cluster_means(x: Tensor, assign: Tensor, mask: Tensor, k: int) -> Tensor:
    """Per-cluster means via one-hot bmm (deterministic, unlike atomic index_add on CUDA)."""
    sums = x.new_zeros(x.shape[0], k, x.shape[2])  # [C, K, D]
    counts = x.new_zeros(x.shape[0], k)
    for s in _row_chunks(*x.shape[:2], k):
        onehot = F.one_hot(assign[:, s], k).to(x.dtype) * mask[:, s, None]  # [C, rows, K]
        sums.baddbmm_(onehot.transpose(1, 2), x[:, s])
        counts += onehot.sum(1)
    return sums / counts.clamp_min(1).unsqueeze(-1)


def _init_indices(x: Tensor, mask: Tensor, k: int, seeds: list[int], init: str) -> Tensor:
    """Pick k distinct row indices per class: uniform ("random") or D²-weighted ("kmeans++").

    Each class draws only from its own ``torch.Generator(seed)`` on the CPU, so a class gets the
    same indices alone or inside a batch and on any device.
    """
    counts = mask.sum(1).tolist()
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    if init == "random":
        local = [torch.randperm(int(n), generator=g)[:k] for n, g in zip(counts, gens, strict=True)]
        return torch.stack([mask[c].nonzero().squeeze(1)[i.to(x.device)] for c, i in enumerate(local)])
    u = torch.stack([torch.rand(k, generator=g, dtype=torch.float64) for g in gens]).to(x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    x_sq = x.pow(2).sum(-1)  # [C, M]
    weight = mask.double()  # first pick: uniform over valid rows
    min_d = torch.full(mask.shape, torch.inf, dtype=torch.float64, device=x.device)
    picked = torch.empty(x.shape[0], k, dtype=torch.long, device=x.device)
    for j in range(k):
        cdf = weight.cumsum(1)
        empty = cdf[:, -1:] == 0  # only chosen/duplicate rows left: fall back to uniform
        cdf = torch.where(empty, (mask & (min_d > -1)).double().cumsum(1), cdf)
        pick = torch.searchsorted(cdf, u[:, j : j + 1] * cdf[:, -1:], right=True)
        picked[:, j] = pick.squeeze(1).clamp_max(x.shape[1] - 1)
        centre = x[rows, picked[:, j]].unsqueeze(1)  # [C, 1, D]
        min_d = torch.minimum(min_d, pairwise_sq_dists(x, centre, x_sq).squeeze(-1).double())
        min_d[rows, picked[:, j]] = -2.0  # chosen rows: never drawn again
        weight = min_d.clamp_min(0) * mask
    return picked


def _lloyd(x: Tensor, mask: Tensor, k: int, seeds: list[int], cfg: dict) -> list[KMeansResult]:
    """Batched Lloyd iterations; a class stops once its relative improvement is <= tol.

    The bookkeeping (which classes still move, their objectives) stays on the device: a GPU run reads
    back two flags per iteration (any class still moving, any empty cluster), not every class's objective.
    """
    rows = torch.arange(x.shape[0], device=x.device)
    centroids = x[rows[:, None], _init_indices(x, mask, k, seeds, cfg["init"])]  # [C, K, D]
    assign, d = _assign(x, centroids, mask)
    objective = d.new_zeros(x.shape[0], cfg["max_iter"] + 1, dtype=torch.float64)
    objective[:, 0] = d.double().sum(1)
    live = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    iterations = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for i in range(cfg["max_iter"]):
        if not bool(live.any()):
            break
        new_c = _cluster_means(x, _repair_empty(assign, d, mask, k), mask, k)
        centroids = torch.where(live[:, None, None], new_c, centroids)
        new_a, new_d = _assign(x, centroids, mask)
        assign = torch.where(live[:, None], new_a, assign)
        d = torch.where(live[:, None], new_d, d)
        value, previous = d.double().sum(1), objective[rows, iterations]
        objective[:, i + 1] = torch.where(live, value, objective[:, i + 1])
        iterations += live
        live &= previous - value > cfg["tol"] * previous
    counts, values = iterations.tolist(), objective.tolist()
    return [
        KMeansResult(centroids[c], assign[c][mask[c]], values[c][: counts[c] + 1], counts[c])
        for c in range(x.shape[0])
    ]


def _faiss_kmeans(x: Tensor, k: int, seed: int, cfg: dict) -> KMeansResult:
    """Run faiss's own Lloyd loop (and empty-cluster split) from our seeded initial centroids.

    faiss stops by the same relative-improvement rule where it has ``early_stop_threshold``
    (else only on no change); ``assign`` and the last objective entry are recomputed from its
    final centroids, so every field means what it means for the torch backend.
    """
    import faiss

    mask = torch.ones(1, x.shape[0], dtype=torch.bool, device=x.device)
    init = x[_init_indices(x[None], mask, k, [seed], cfg["init"])[0]]
    has_early_stop = hasattr(faiss.ClusteringParameters(), "early_stop_threshold")
    early_stop = {"early_stop_threshold": cfg["tol"]} if has_early_stop else {}
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=cfg["max_iter"],
        seed=seed % 2**31,  # a C int; unused here (own init, no subsampling) but must fit
        gpu=x.is_cuda and faiss.get_num_gpus() > 0,
        max_points_per_centroid=x.shape[0],  # no subsampling: cluster every point
        min_points_per_centroid=1,
        **early_stop,
    )
    km.train(x.detach().float().cpu().numpy(), init_centroids=init.float().cpu().numpy())
    centroids = torch.from_numpy(km.centroids).to(x)
    assign, d = _assign(x[None], centroids[None], mask)
    objective = [float(v) for v in km.obj] + [d.double().sum().item()]
    return KMeansResult(centroids, assign[0], objective, len(objective) - 1)


def _faiss_usable(x: Tensor) -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return not x.is_cuda or faiss.get_num_gpus() > 0


def resolve_backend(backend: str, x: Tensor) -> str:
    """``faiss`` or ``torch``: what ``backend`` ("auto", "faiss", "torch") means for data like ``x``."""
    _check("backend", backend, BACKENDS)
    if backend == "auto":
        return "faiss" if _faiss_usable(x) else "torch"
    return backend


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")


def kmeans(
    x: Tensor,
    k: int,
    *,
    backend: str = "auto",
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    init: str = "random",
) -> KMeansResult:
    """K-means of x: [M, D] into k clusters, deterministic for a given seed and backend.

    Init is ``"random"`` (k distinct uniform rows, the authors' choice and the default) or
    ``"kmeans++"`` (k distinct rows, D²-weighted), both from ``torch.Generator(seed)``. k-means++ spreads
    the centres towards the periphery, so the points nearest them are outliers: as a selection rule for
    representative images it picks the least representative ones (docs/design.md). "auto" picks faiss
    when it is importable and x is on the CPU or faiss has GPUs, else the torch loop on x's device.
    """
    _check("init", init, INITS)
    if k > x.shape[0]:
        raise ValueError(f"k={k} clusters need at least k points, got M={x.shape[0]}")
    cfg = {"max_iter": max_iter, "tol": tol, "init": init}
    if resolve_backend(backend, x) == "faiss":
        return _faiss_kmeans(x, k, seed, cfg)
    mask = torch.ones(1, x.shape[0], dtype=torch.bool, device=x.device)
    return _lloyd(x[None], mask, k, [seed], cfg)[0]


def batched_kmeans(
    xs: Tensor,
    k: int,
    *,
    mask: Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    seeds: list[int],
    init: str = "random",
) -> list[KMeansResult]:
    """Torch K-means of every class at once (for GPUs without faiss-gpu).

    xs: [C, M, D] padded with finite values, mask: [C, M] valid rows (default all). Class c
    uses ``seeds[c]``, so its result equals ``kmeans(xs[c][mask[c]], k, backend="torch",
    seed=seeds[c])``; ``assign`` covers only the valid rows, in order.
    """
    _check("init", init, INITS)
    if len(seeds) != xs.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {xs.shape[0]} classes; give one seed per class")
    mask = torch.ones(xs.shape[:2], dtype=torch.bool, device=xs.device) if mask is None else mask
    for c, m in enumerate(mask.sum(1).tolist()):
        if k > m:
            raise ValueError(f"k={k} clusters need at least k points, class {c} has M={m}")
    cfg = {"max_iter": max_iter, "tol": tol, "init": init}
    return _lloyd(xs, mask, k, list(seeds), cfg)


def nearest_to_centres(x: Tensor, centroids: Tensor, n: int = 1, *, unique: bool = True) -> Tensor:
    """Indices [K, n] of the n points of x: [M, D] nearest each centre, nearest first.

    With ``unique`` no point serves two centres: centres are processed in order of their nearest
    distance and take their n nearest untaken points (the reference allowed duplicates).
    """
    k, m = centroids.shape[0], x.shape[0]
    if k * n > m:
        raise ValueError(f"K={k} centres x n={n} samples need K*n <= M, got M={m}")
    if not unique:
        d = pairwise_sq_dists(centroids[None], x[None])[0]  # [K, M]
        return d.sort(dim=1, stable=True).indices[:, :n]
    return batched_nearest_to_centres(x[None], centroids[None], n)[0]


def batched_nearest_to_centres(
    xs: Tensor, centroids: Tensor, n: int = 1, mask: Tensor | None = None
) -> Tensor:
    """Unique :func:`nearest_to_centres` of all classes: xs [C, M, D], centroids [C, K, D] -> [C, K, n].

    Rows outside ``mask`` [C, M] are never chosen. The greedy order is the same as one class at a time,
    with no value read back on the host: K small steps for all classes instead of K host round trips per
    class (the first is ~1,000 launches per DREAM clustering event on a GPU, the second was ~1,300 syncs).
    """
    c, k = centroids.shape[:2]
    valid = mask.sum(1) if mask is not None else torch.full((c,), xs.shape[1], device=xs.device)
    if (small := int(valid.min())) < k * n:
        raise ValueError(f"K={k} centres x n={n} samples need K*n <= M, got M={small} valid rows in a class")
    d = pairwise_sq_dists(centroids, xs)  # [C, K, M]
    if mask is not None:
        d = d.masked_fill(~mask[:, None, :], torch.inf)
    width = min(n * k, xs.shape[1])  # at most n * j of a centre's nearest points are taken before its turn
    order = d.sort(dim=2, stable=True).indices[:, :, :width]  # [C, K, width]
    turn = d.min(2).values.sort(dim=1, stable=True).indices  # [C, K] centres, nearest first
    rows = torch.arange(c, device=xs.device)
    position = torch.arange(width, device=xs.device)
    taken = torch.zeros(c, xs.shape[1], dtype=torch.bool, device=xs.device)
    out = torch.empty(c, k, n, dtype=torch.long, device=xs.device)
    for j in range(k):
        centre = turn[:, j]  # [C]
        cand = order[rows, centre]  # [C, width]
        busy = taken.gather(1, cand)
        first_free = (busy.long() * width + position).sort(dim=1).indices[:, :n]  # untaken first, in order
        picks = cand.gather(1, first_free)  # [C, n]
        out[rows, centre] = picks
        taken.scatter_(1, picks, True)
    return out


def select_representatives(
    x: Tensor,
    n_clusters: int,
    n_per_cluster: int = 1,
    *,
    backend: str = "auto",
    seed: int = 0,
    max_iter: int = 100,
    init: str = "random",
) -> tuple[Tensor, int]:
    """Indices [n_clusters * n_per_cluster] of x: [M, D], one block per K-means centre; Lloyd iterations."""
    result = kmeans(x, n_clusters, backend=backend, seed=seed, max_iter=max_iter, init=init)
    return nearest_to_centres(x, result.centroids, n_per_cluster).flatten(), result.iterations
