import importlib.util

import pytest
import torch

from dream_pl import clustering
from dream_pl.clustering import (
    batched_kmeans,
    batched_nearest_to_centres,
    kmeans,
    nearest_to_centres,
    select_representatives,
)
from dream_pl.samplers.base import batched_selection_quality, selection_quality

HAS_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss is not importable")
BACKENDS = ["torch", pytest.param("faiss", marks=needs_faiss)]


def blobs(seed: int = 0, mirrored: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """5 blobs around 20·e_i in 8-d: 20 offsets and their negatives (so each blob's mean is its
    centre exactly; ``mirrored=False`` draws fresh ones, which breaks distance ties) plus one point
    at the centre; rows shuffled.

    Returns x: [205, 8], label: [205], and the row index of each blob's centre point: [5].
    """
    g = torch.Generator().manual_seed(seed)
    centres = 20 * torch.eye(5, 8)
    rows, labels = [], []
    for i, c in enumerate(centres):
        off = torch.randn(20, 8, generator=g)
        rows += [c + off, c - (off if mirrored else torch.randn(20, 8, generator=g)), c[None]]
        labels += [i] * 41
    perm = torch.randperm(205, generator=g)
    x, label = torch.cat(rows)[perm], torch.tensor(labels)[perm]
    at_centre = torch.arange(40, 205, 41)  # rows of the centre points before shuffling
    return x, label, torch.argsort(perm)[at_centre]


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to a relabelling: the label pairs form a bijection."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_selects_the_points_at_the_true_centres(backend):
    x, _, at_centre = blobs()
    # k-means++ starts are what recovers well-separated blobs (DREAM's default, uniform starts, can merge two)
    picked, _ = select_representatives(x, 5, 1, backend=backend, seed=0, init="kmeans++")
    assert sorted(picked.tolist()) == sorted(at_centre.tolist())


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_recovers_the_blobs(backend):
    x, label, _ = blobs(1)
    result = kmeans(x, 5, backend=backend, seed=0, init="kmeans++")
    assert same_partition(result.assign, label)
    assert result.assign.dtype == torch.int64
    assert len(result.objective) == result.iterations + 1
    inertia = sum(((x[i] - result.centroids[result.assign[i]]) ** 2).sum() for i in range(205))
    assert result.objective[-1] == pytest.approx(float(inertia), rel=1e-4)


def test_n_per_cluster_bookkeeping_matches_brute_force():
    x, _, _ = blobs(2, mirrored=False)
    n = 3
    picked, _ = select_representatives(x, 5, n, backend="torch", seed=4, init="kmeans++")
    result = kmeans(x, 5, backend="torch", seed=4, init="kmeans++")
    assert picked.shape == (5 * n,)
    assert len(set(picked.tolist())) == 5 * n
    for k, block in enumerate(picked.view(5, n).tolist()):
        assert all(result.assign[i] == k for i in block)
        dist = []
        for i in range(x.shape[0]):
            dist.append(sum((x[i, j] - result.centroids[k, j]) ** 2 for j in range(x.shape[1])))
        brute = sorted(range(x.shape[0]), key=lambda i, dist=dist: dist[i])[:n]
        assert block == brute


def test_unique_selection_is_greedy_by_nearest_distance():
    x = torch.tensor([[0.0], [1.0], [10.0]])
    centroids = torch.tensor([[0.4], [0.0]])
    # both centres' nearest point is row 0; centre 1 (distance 0) takes it first
    assert nearest_to_centres(x, centroids, unique=False).tolist() == [[0], [0]]
    assert nearest_to_centres(x, centroids).tolist() == [[1], [0]]
    assert nearest_to_centres(x, centroids[:1], 3).tolist() == [[0, 1, 2]]


@needs_faiss
@pytest.mark.parametrize("seed", [0, 3])
def test_faiss_and_torch_agree_on_separated_clusters(seed):
    x, _, _ = blobs(seed)
    t = kmeans(x, 5, backend="torch", seed=seed, init="kmeans++")
    f = kmeans(x, 5, backend="faiss", seed=seed, init="kmeans++")
    assert same_partition(t.assign, f.assign)
    assert t.objective[-1] == pytest.approx(f.objective[-1], rel=0.01)


@needs_faiss
def test_torch_objective_on_duplicates_with_empty_clusters(monkeypatch):
    a, b = torch.full((4,), 10.0), torch.tensor([-10.0, 10, -10, 10])
    p = torch.tensor([[10.0, -10, 10, -10], [11, -10, 10, -10], [-10, -10, 10, 10], [10, 10, -10, -10]])
    x = torch.cat([a.repeat(40, 1), b.repeat(40, 1), p])  # every row has norm 20 (p[1]: ~20.5)
    optimum = 2 * 0.5**2  # {a}, {b}, {p0, p1}, {p2}, {p3}
    saw_empty = []
    repair = clustering._repair_empty

    def spy(assign, d, mask, k):
        saw_empty.append(len(set(assign[0].tolist())) < k)
        return repair(assign, d, mask, k)

    monkeypatch.setattr(clustering, "_repair_empty", spy)
    best = float("inf")
    for seed in range(4):
        t = kmeans(x, 5, backend="torch", init="random", seed=seed)
        f = kmeans(x, 5, backend="faiss", init="random", seed=seed)
        assert torch.isfinite(t.centroids).all()
        assert t.centroids.norm(dim=1).min() > 19  # never collapsed to the origin
        assert t.objective[-1] <= 1.05 * f.objective[-1]
        best = min(best, t.objective[-1])
    assert any(saw_empty)
    assert best == pytest.approx(optimum, rel=1e-3)


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_fewer_distinct_points_than_k(init):
    x = torch.cat([torch.full((10, 3), 5.0), torch.full((10, 3), -5.0)])
    result = kmeans(x, 4, backend="torch", init=init, seed=1)
    # duplicate centroids sit on data, never at the origin or NaN
    assert {tuple(c) for c in result.centroids.tolist()} == {(5.0,) * 3, (-5.0,) * 3}
    assert result.objective[-1] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_batched_equals_per_class(init):
    g = torch.Generator().manual_seed(5)
    every = torch.arange(60)
    valid = [every[:30], every[every % 4 != 3], every]  # prefix, interleaved (45), full
    xs = torch.zeros(3, 60, 6)
    mask = torch.zeros(3, 60, dtype=torch.bool)
    for c, rows in enumerate(valid):
        centres = 6 * torch.randn(4, 6, generator=g)
        xs[c, rows] = centres[torch.arange(len(rows)) % 4] + torch.randn(len(rows), 6, generator=g)
        mask[c, rows] = True
    results = batched_kmeans(xs, 4, mask=mask, seeds=[7, 9, 8], init=init)
    for c, got in enumerate(results):
        ref = kmeans(xs[c, valid[c]], 4, backend="torch", seed=[7, 9, 8][c], init=init)
        assert torch.equal(got.assign, ref.assign)
        torch.testing.assert_close(got.centroids, ref.centroids)
        assert got.iterations == ref.iterations
        assert got.objective == pytest.approx(ref.objective, rel=1e-5)


def test_chunked_distances_give_the_same_clustering(monkeypatch):
    x, _, _ = blobs(3)
    whole = kmeans(x, 5, backend="torch", seed=2)
    monkeypatch.setattr(clustering, "CHUNK_ELEMENTS", 16)  # 3 rows of 5 centres per chunk
    chunked = kmeans(x, 5, backend="torch", seed=2)
    assert torch.equal(whole.assign, chunked.assign)
    torch.testing.assert_close(whole.centroids, chunked.centroids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_and_global_rng_untouched(backend):
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    runs = [kmeans(x, 7, backend=backend, seed=11, init="random") for _ in range(2)]
    batched = [batched_kmeans(x[None], 7, seeds=[11])[0] for _ in range(2)]
    select_representatives(x, 7, 2, backend=backend, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in (runs, batched):
        assert torch.equal(a.assign, b.assign)
        assert torch.equal(a.centroids, b.centroids)
        assert a.objective == b.objective
    other = kmeans(x, 7, backend=backend, seed=12, init="random")
    assert not torch.equal(other.centroids, runs[0].centroids)


def test_errors_name_the_values():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match=r"k=11.*M=10"):
        kmeans(x, 11, backend="torch")
    with pytest.raises(ValueError, match=r"K=4.*n=3.*M=10"):
        nearest_to_centres(x, x[:4], 3)
    with pytest.raises(ValueError, match=r"'sklearn'.*'auto', 'faiss', 'torch'"):
        kmeans(x, 2, backend="sklearn")
    with pytest.raises(ValueError, match=r"'kmeans\|\|'"):
        kmeans(x, 2, init="kmeans||")
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 3:] = False
    with pytest.raises(ValueError, match=r"k=4.*class 1.*M=3"):
        batched_kmeans(x.expand(2, 10, 2), 4, mask=mask, seeds=[0, 1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("init", clustering.INITS)
def test_cuda_torch_backend_matches_cpu(init):
    """The same clustering on the GPU as on the CPU (the starts come from a CPU generator either way).

    Blob recovery is checked with k-means++ starts only: uniform starts can merge two blobs (on the CPU
    too, for this seed), which is a property of the init, not of the device.
    """
    x, label, at_centre = blobs(4)
    cpu = kmeans(x, 5, backend="torch", seed=0, init=init)
    gpu = kmeans(x.cuda(), 5, backend="torch", seed=0, init=init)
    assert gpu.centroids.is_cuda
    assert same_partition(gpu.assign.cpu(), cpu.assign)
    assert gpu.iterations == cpu.iterations
    picked, _ = select_representatives(x.cuda(), 5, 1, backend="auto", seed=0, init=init)
    assert sorted(picked.tolist()) == sorted(select_representatives(x, 5, 1, seed=0, init=init)[0].tolist())
    (batched,) = batched_kmeans(x.cuda()[None], 5, seeds=[0], init=init)
    assert same_partition(batched.assign.cpu(), cpu.assign)
    if init == "kmeans++":
        assert same_partition(gpu.assign.cpu(), label)
        assert sorted(picked.tolist()) == sorted(at_centre.tolist())


@pytest.mark.parametrize("n", [1, 3])
def test_batched_nearest_equals_one_class_at_a_time(n):
    """Padded classes of different sizes, with ties: the batched greedy picks what each class alone picks."""
    g = torch.Generator().manual_seed(5)
    sizes = [40, 25, 33]
    xs = torch.zeros(3, 40, 4)
    for c, m in enumerate(sizes):
        xs[c, :m] = torch.randn(m, 4, generator=g).round(decimals=1)  # rounding makes equal distances
    xs[1, 25:] = 0.0  # padding on top of real points: must never be chosen
    mask = torch.arange(40)[None] < torch.tensor(sizes)[:, None]
    centroids = torch.randn(3, 6, 4, generator=g)
    batched = batched_nearest_to_centres(xs, centroids, n, mask)
    for c, m in enumerate(sizes):
        assert torch.equal(batched[c], nearest_to_centres(xs[c, :m], centroids[c], n))
    assert (batched[1] < 25).all()


def test_batched_selection_quality_equals_per_class():
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(m, 5, generator=g) for m in (12, 9)]
    xs = torch.zeros(2, 12, 5)
    for c, f in enumerate(feats):
        xs[c, : len(f)] = f
    mask = torch.arange(12)[None] < torch.tensor([12, 9])[:, None]
    chosen = torch.tensor([[0, 5, 11], [1, 2, 8]])
    batched = batched_selection_quality(xs, mask, chosen)
    for c, f in enumerate(feats):
        expected = selection_quality(f, chosen[c])
        assert batched[c] == pytest.approx(expected, rel=1e-5)


def test_batched_nearest_refuses_a_class_with_too_few_valid_rows():
    xs = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.arange(6)[None] < torch.tensor([6, 3])[:, None]
    with pytest.raises(ValueError, match=r"K=2 centres x n=2 samples need K\*n <= M, got M=3"):
        batched_nearest_to_centres(xs, xs[:, :2], 2, mask)
