"""Tests for the matching losses: gradient matching (DC/IDC) and distribution matching (DM).

Gradients of the tiny net are derived in closed form here (softmax minus one-hot, chain rule through
a linear layer and an unfolded convolution), so nothing is compared with autograd run the same way.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dream_pl.matchers import (
    METRICS,
    DistributionMatcher,
    GradientMatcher,
    gradient_distance,
    matched_parameters,
)
from dream_pl.models import create_model

# g_real = [[1, 2], [3, 4]], g_syn = [[0, 2], [1, 1]]  ->  diff = [[1, 0], [2, 3]]
G_REAL = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
G_SYN = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
# row 0: <[1,2],[0,2]> = 4, |.| = sqrt(5), 2;  row 1: <[3,4],[1,1]> = 7, |.| = 5, sqrt(2)
COS_EXPECTED = (1 - 4 / (math.sqrt(5) * 2)) + (1 - 7 / (5 * math.sqrt(2)))
HAND_DISTANCES = {
    "mse": 1 + 0 + 4 + 9,
    "l1": 1 + 0 + 2 + 3,
    "l1_mean": (1 + 0) / 2 + (2 + 3) / 2,
    "cos": COS_EXPECTED,
}


# --- gradient_distance ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_gradient_distance_by_hand(metric):
    assert float(gradient_distance(G_REAL, G_SYN, metric)) == pytest.approx(HAND_DISTANCES[metric], rel=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_gradient_distance_rows_are_the_first_dim_of_a_conv_weight(metric):
    # The same numbers as [out=2, in=1, 1, 2] conv weights: a row is everything of one output channel.
    value = gradient_distance(G_REAL.view(2, 1, 1, 2), G_SYN.view(2, 1, 1, 2), metric)
    assert float(value) == pytest.approx(HAND_DISTANCES[metric], rel=1e-6)


def test_gradient_distance_cos_of_a_zero_row_is_one():
    # cos(0, v) is taken as 0 thanks to eps, so each zero row costs exactly 1 (not NaN).
    value = gradient_distance(torch.zeros(3, 4), torch.ones(3, 4), "cos")
    assert float(value) == pytest.approx(3.0)


def test_gradient_distance_is_zero_on_equal_gradients():
    g = torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.25, -4.0]])
    for metric in METRICS:
        assert float(gradient_distance(g, g.clone(), metric)) == pytest.approx(0.0, abs=1e-6)


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match="'l3'"):
        gradient_distance(G_REAL, G_SYN, "l3")
    with pytest.raises(ValueError, match="'cosine'"):
        GradientMatcher("cosine")


@pytest.mark.parametrize(("metric", "expected"), [("l1_mean", 1 + 2 + 3), ("cos", 0 + 2 + 1)])
def test_gradient_distance_on_a_bias_vector(metric, expected):
    # rows of one value: l1_mean = |1-0| + |2-0| + |-1-2|; cos = 1 - sign product: same sign -> 0,
    # opposite -> 2, a zero -> 1.
    g_real = torch.tensor([1.0, 2.0, -1.0])
    g_syn = torch.tensor([3.0, -4.0, 0.0]) if metric == "cos" else torch.tensor([0.0, 0.0, 2.0])
    assert float(gradient_distance(g_real, g_syn, metric)) == pytest.approx(expected, abs=1e-5)


# --- GradientMatcher on a tiny net ----------------------------------------------------------------


def tiny_net() -> nn.Sequential:
    """Conv2d(1, 2, 3) on 4x4 inputs -> [B, 2, 2, 2] -> Flatten -> Linear(8, 3), fixed weights."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net


def tiny_batches() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x_real, x_syn = torch.randn(5, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    return x_real, torch.tensor([0, 1, 2, 1, 0]), x_syn, torch.tensor([2, 2, 0])


def hand_gradients(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """d mean-CE / d theta of the tiny net by the chain rule (no autograd)."""
    conv, lin = net[0], net[2]
    with torch.no_grad():
        b = x.shape[0]
        cols = F.unfold(x, kernel_size=3)  # [B, 9, 4]: (c, kh, kw) x output positions (h, w)
        out = (
            torch.einsum("ok,bkp->bop", conv.weight.flatten(1), cols) + conv.bias[None, :, None]
        )  # [B, 2, 4]
        feats = out.flatten(1)  # [B, 8], Flatten's (o, h, w) order
        logits = feats @ lin.weight.T + lin.bias
        delta = (logits.softmax(1) - F.one_hot(y, 3)) / b  # d CE / d logits, mean over the batch
        d_out = (delta @ lin.weight).view(b, 2, 4)
        return {
            "conv.weight": torch.einsum("bop,bkp->ok", d_out, cols).view(2, 1, 3, 3),
            "conv.bias": d_out.sum((0, 2)),
            "lin.weight": delta.T @ feats,
            "lin.bias": delta.sum(0),
        }


def hand_distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> float:
    ra, rb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if metric == "mse":
        return float(((a - b) ** 2).sum())
    if metric == "l1":
        return float((a - b).abs().sum())
    if metric == "l1_mean":
        return float((ra - rb).abs().mean(1).sum())
    return float((1 - (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))).sum())


def test_hand_gradients_agree_with_autograd():
    # Guards the closed form itself, so the matcher tests below rest on a checked oracle.
    net = tiny_net()
    x, y, _, _ = tiny_batches()
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    hand = hand_gradients(net, x, y)
    for name, g in zip(["conv.weight", "conv.bias", "lin.weight", "lin.bias"], grads, strict=True):
        torch.testing.assert_close(hand[name], g, rtol=1e-5, atol=1e-6)


MATCHED = {
    (False, False): ["conv.weight"],
    (False, True): ["conv.weight", "lin.weight"],
    (True, False): ["conv.weight", "conv.bias", "lin.bias"],
}


def test_matched_parameters_of_the_tiny_net():
    net = tiny_net()
    named = {"conv.weight": net[0].weight, "conv.bias": net[0].bias, "lin.weight": net[2].weight}
    named["lin.bias"] = net[2].bias
    for (bias, fc), names in MATCHED.items():
        got = matched_parameters(net, bias=bias, fc=fc)
        assert len(got) == len(names)
        assert all(p is named[n] for p, n in zip(got, names, strict=True))


def flags_cases() -> list:
    return [
        pytest.param(metric, bias, fc, id=f"{metric}-bias{bias:d}-fc{fc:d}")
        for metric in METRICS
        for bias, fc in MATCHED
    ]


@pytest.mark.parametrize(("metric", "bias", "fc"), flags_cases())
def test_gradient_matcher_equals_per_layer_hand_computation(metric, bias, fc):
    net = tiny_net()
    x_real, y_real, x_syn, y_syn = tiny_batches()
    g_real, g_syn = hand_gradients(net, x_real, y_real), hand_gradients(net, x_syn, y_syn)
    expected = sum(hand_distance(g_real[n], g_syn[n], metric) for n in MATCHED[(bias, fc)])
    loss = GradientMatcher(metric, bias=bias, fc=fc)(net, x_real, y_real, x_syn, y_syn)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_gradient_matcher_is_zero_for_identical_batches(metric):
    net = tiny_net()
    x, y, _, _ = tiny_batches()
    for fc in (False, True):
        loss = GradientMatcher(metric, fc=fc)(net, x, y, x.clone(), y.clone())
        assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_gradient_matcher_is_differentiable_in_x_syn_only():
    net = tiny_net()
    x_real, y_real, x_syn, y_syn = tiny_batches()
    x_syn.requires_grad_(True)
    loss = GradientMatcher("mse", fc=True)(net, x_real, y_real, x_syn, y_syn)
    (grad,) = torch.autograd.grad(loss, x_syn)
    assert grad.shape == x_syn.shape
    assert float(grad.abs().sum()) > 0
    assert torch.isfinite(grad).all()
    assert all(p.grad is None for p in net.parameters())


def test_matched_parameters_of_convnet3_are_the_three_conv_weights():
    net = create_model("convnet", channels=1, num_classes=10, size=28)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    got = matched_parameters(net)
    assert len(convs) == 3
    assert len(got) == 3
    assert all(p is c.weight for p, c in zip(got, convs, strict=True))
    assert [tuple(p.shape) for p in got] == [(128, 1, 3, 3), (128, 128, 3, 3), (128, 128, 3, 3)]
    # + conv biases and instance-norm affine (3 blocks x 3) + classifier bias; fc adds the classifier weight
    assert len(matched_parameters(net, bias=True)) == 3 + 9 + 1
    assert matched_parameters(net, fc=True)[-1] is net.classifier.weight


# --- DistributionMatcher --------------------------------------------------------------------------


class ScaledEmbed(nn.Module):
    """embed(x) = w * flatten(x) with a learnable scalar w = 2."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x.flatten(1)


def test_distribution_matcher_by_hand():
    net = ScaledEmbed()
    x_real = torch.tensor([[0.0, 2.0], [4.0, 0.0]]).view(2, 1, 1, 2)  # mean [2, 1] -> features [4, 2]
    x_syn = (
        torch.tensor([[0.0, 0.0], [2.0, 0.0]]).view(2, 1, 1, 2).requires_grad_(True)
    )  # mean [1, 0] -> [2, 0]
    loss = DistributionMatcher()(net, x_real, torch.tensor([7, 7]), x_syn, torch.tensor([7, 7]))
    # diff of mean features = [2, 2]  ->  4 + 4
    assert loss.item() == pytest.approx(8.0)
    g_x, g_w = torch.autograd.grad(loss, [x_syn, net.w])
    # d/d x_syn[i, d] = 2 * diff_d * (-w / 2 rows) = -4 for every entry
    torch.testing.assert_close(g_x, torch.full_like(x_syn, -4.0))
    # real features are a constant target: only the syn path, sum_d 2 diff_d (-mean x_syn_d) = -4
    # (a non-detached target would add sum_d 2 diff_d mean x_real_d = +12)
    assert float(g_w) == pytest.approx(-4.0)


def test_distribution_matcher_is_zero_for_equal_means():
    net = ScaledEmbed()
    x_real = torch.tensor([[0.0, 2.0], [2.0, 0.0]]).view(2, 1, 1, 2)
    x_syn = torch.tensor([[1.0, 1.0]]).view(1, 1, 1, 2)
    assert DistributionMatcher()(net, x_real, None, x_syn, None).item() == pytest.approx(0.0)
