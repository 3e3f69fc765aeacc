"""MMD and per-sample gradient norms against hand computations."""

import math

import pytest
import torch
from torch import nn

from dream_pl.diagnostics import median_bandwidth, mmd2_linear, mmd2_rbf, per_sample_grad_norms


def test_linear_mmd_is_squared_mean_difference():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # mean (1, 2)
    y = torch.tensor([[4.0, 6.0]])  # mean (4, 6): (3^2 + 4^2) = 25
    assert float(mmd2_linear(x, y)) == pytest.approx(25.0)


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
