"""MMD, gradient distances and per-sample gradient norms against hand computations; selection quality."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dream_pl.data import RealSet, load_dataset
from dream_pl.diagnostics import (
    conv_gradient,
    median_bandwidth,
    mmd2_rbf,
    per_class_diagnostics,
    per_sample_grad_norms,
    stack_diagnostics,
)
from dream_pl.matchers import gradient_distance
from dream_pl.models import create_model
from dream_pl.samplers import RepresentativeSampler
from dream_pl.seeding import generator

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def fashion() -> RealSet:
    return RealSet.from_data(load_dataset("fashion_mnist"))


def test_rbf_mmd_by_hand():
    x, y = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    # k(x,x) = k(y,y) = 1, k(x,y) = exp(-1 / (2 * 1^2)): mmd^2 = 2 - 2 exp(-1/2)
    assert float(mmd2_rbf(x, y, sigma=1.0)) == pytest.approx(2 - 2 * math.exp(-0.5), rel=1e-5)
    same = torch.tensor([[0.0], [3.0]])
    assert float(mmd2_rbf(same, same.flip(0), sigma=2.0)) == pytest.approx(0.0, abs=1e-6)


def test_median_bandwidth():
    assert median_bandwidth(torch.tensor([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)  # distances 1, 3, 2
    assert median_bandwidth(torch.zeros(3, 2)) == 1.0


def test_per_sample_grad_norm_of_a_linear_softmax_model():
    net = nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]))
        net.bias.copy_(torch.tensor([0.1, -0.2]))
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]])
    y = torch.tensor([0, 1])
    # dCE/dW = (p - e_y) x^T and dCE/db = p - e_y, so the norm is ||p - e_y|| * sqrt(||x||^2 + 1)
    p = torch.softmax(x @ net.weight.T + net.bias, dim=1)
    r = p - torch.eye(2)[y]
    expected = r.norm(dim=1) * torch.sqrt(x.pow(2).sum(1) + 1)
    torch.testing.assert_close(per_sample_grad_norms(net, x, y), expected)


def test_conv_gradient_and_its_l1_distance_by_hand():
    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=True), nn.Flatten(), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(0.0)
        net[2].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    x, y = torch.tensor([[[[1.0]]], [[[2.0]]]]), torch.tensor([0, 0])
    # logits (a, -a) for a = w x: dCE/dw = -2 x sigmoid(-2a) per sample; mean over the two samples
    expected = sum(-2 * xi * (1 / (1 + math.exp(2 * xi))) for xi in (1.0, 2.0)) / 2
    got = conv_gradient(net, x, y, chunk=1)  # only the 4-D conv weight, chunks weighted by their size
    assert got.shape == (1,)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert float(gradient_distance(torch.zeros(1), got, "l1")) == pytest.approx(abs(expected), rel=1e-5)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
@pytest.mark.parametrize(("kmeans_init", "bound"), [("random", (None, 1.2)), ("kmeans++", (1.3, None))])
def test_default_selection_is_as_representative_as_a_random_batch(fashion, kmeans_init, bound):
    """Real FashionMNIST, an untrained ConvNet-3 (width 32), 1,000 images per class, N = 128, n = 1.

    The default K-means start (uniform random points) selects batches whose conv-weight gradient is as
    close to the class's as a random batch's: 1.03x here against one random batch per class (0.93x against
    another draw; one batch per class is that noisy), bounded at the issue's 1.2x. k-means++ starts spread
    the centres to the periphery and select outliers (asserted > 1.3x), which the metric must be able to
    show. Averaged over a run's events the default reads 0.91x (docs/benchmarks.md).
    """
    torch.manual_seed(0)
    net = create_model("convnet", channels=1, num_classes=10, size=28, width=32)
    sampler = RepresentativeSampler(128, backend="torch", kmeans_init=kmeans_init, embed_subset=1000)
    sampler.refresh(net, fashion, seed=0)
    streams = lambda c: generator(0, "test", c)  # noqa: E731
    per_class = per_class_diagnostics(net, fashion, sampler, streams, max_classes=10, reference=1000)
    stats = stack_diagnostics(per_class)
    ratio = float(stats["graddist_ratio"].mean())  # as logged: the mean over classes of selected / random
    low, high = bound
    assert low is None or ratio > low, ratio
    assert high is None or ratio <= high, ratio
