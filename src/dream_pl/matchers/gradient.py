"""Gradient matching (DC / IDC): make the synthetic batch's training gradient equal the real batch's.

The loss of Eq. 2 of the DREAM paper: sum over matched parameter tensors of D(g_real, g_syn), where
g = d CE / d theta of the matching network. As in IDC, only conv weights (4-D tensors) are matched by
default, and every distance is a tensor-wide *sum* (no per-channel grouping, no mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METRICS = ("mse", "l1", "l1_mean", "cos")


def gradient_distance(g_real: Tensor, g_syn: Tensor, metric: str) -> Tensor:
    """Distance between two gradients of one parameter tensor.

    Args:
        g_real: gradient from the real batch (treated as a constant target).
        g_syn: gradient from the synthetic batch, same shape.
        metric: ``mse`` sum of squares, ``l1`` sum of absolute values, ``l1_mean`` per-row mean of
            absolute values summed over rows, ``cos`` sum over rows of ``1 - cos`` (eps 1e-6); rows are
            the first dimension (output channels).

    Returns:
        A scalar tensor.

    >>> gradient_distance(torch.ones(2, 3), torch.zeros(2, 3), "l1_mean")
    tensor(2.)
    """
    diff = g_real - g_syn
    if metric == "mse":
        return diff.pow(2).sum()
    if metric == "l1":
        return diff.abs().sum()
    rows_real, rows_syn = g_real.reshape(len(g_real), -1), g_syn.reshape(len(g_syn), -1)
    if metric == "l1_mean":
        return (rows_real - rows_syn).abs().mean(dim=1).sum()
    if metric == "cos":
        return (1 - F.cosine_similarity(rows_real, rows_syn, dim=1, eps=1e-6)).sum()
    raise ValueError(f"metric={metric!r} is not one of {', '.join(METRICS)}")


def matched_parameters(net: nn.Module, *, bias: bool = False, fc: bool = False) -> list[Tensor]:
    """The parameters whose gradients are matched: conv weights, plus 1-D / 2-D tensors on request."""
    return list(matched_named_parameters(net, bias=bias, fc=fc).values())


def matched_named_parameters(net: nn.Module, *, bias: bool = False, fc: bool = False) -> dict[str, Tensor]:
    """:func:`matched_parameters` by name, in the network's parameter order."""
    keep = {4} | ({1} if bias else set()) | ({2} if fc else set())
    return {name: p for name, p in net.named_parameters() if p.dim() in keep}


class GradientMatcher:
    """Per-class gradient matching on a shared network.

    Args:
        metric: one of :data:`METRICS`.
        bias: also match biases and norm affine parameters.
        fc: also match the classifier weight.
        feature_weight: weight of DREAM+'s feature term (its "bidirectional" matching, arXiv 2310.15052):
            the distance, in the same metric, between the mean penultimate features (``net.embed``) of the
            real and the synthetic batch, added to the gradient loss. 0: off (DREAM, IDC); 1: DREAM+'s.
    """

    def __init__(
        self, metric: str = "mse", *, bias: bool = False, fc: bool = False, feature_weight: float = 0.0
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"matcher.metric={metric!r} is not one of {', '.join(METRICS)}")
        if not feature_weight >= 0:
            raise ValueError(f"matcher.feature_weight={feature_weight!r} must be a number >= 0 (0 = off)")
        self.metric, self.bias, self.fc, self.feature_weight = metric, bias, fc, feature_weight

    def __call__(
        self, net: nn.Module, x_real: Tensor, y_real: Tensor, x_syn: Tensor, y_syn: Tensor
    ) -> Tensor:
        """Matching loss; differentiable w.r.t. ``x_syn`` (second-order through the network)."""
        params = matched_parameters(net, bias=self.bias, fc=self.fc)
        loss_real = F.cross_entropy(net(x_real), y_real)
        g_real = torch.autograd.grad(loss_real, params)
        loss_syn = F.cross_entropy(net(x_syn), y_syn)
        g_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
        loss = sum(
            (gradient_distance(gr.detach(), gs, self.metric) for gr, gs in zip(g_real, g_syn, strict=True)),
            start=torch.zeros((), device=x_syn.device),
        )
        if self.feature_weight:
            loss = loss + self.feature_weight * feature_distance(net, x_real, x_syn, self.metric)
        return loss


def feature_distance(net: nn.Module, x_real: Tensor, x_syn: Tensor, metric: str) -> Tensor:
    """DREAM+'s feature term: ``metric`` between the batches' mean penultimate features (real: a constant).

    >>> net = nn.Flatten()
    >>> net.embed = net
    >>> feature_distance(net, torch.ones(2, 1, 1, 2), torch.zeros(1, 1, 1, 2), "l1")
    tensor(2.)
    """
    f_real = net.embed(x_real).detach().mean(dim=0, keepdim=True)
    return gradient_distance(f_real, net.embed(x_syn).mean(dim=0, keepdim=True), metric)
