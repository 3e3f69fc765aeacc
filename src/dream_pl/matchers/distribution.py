"""Distribution matching (DM, Zhao & Bilen 2023): match mean features of real and synthetic batches.

DREAM plugs into DM by choosing the real batch (Table 3 of the paper); the loss itself is DM's.
"""

from __future__ import annotations

from torch import Tensor, nn


def mean_embedding_distance(f_real: Tensor, f_syn: Tensor) -> Tensor:
    """Squared L2 distance between the mean feature vectors of two batches.

    Args:
        f_real: [B_r, D] real features (a constant target).
        f_syn: [B_s, D] synthetic features.

    >>> import torch
    >>> mean_embedding_distance(torch.tensor([[0.0, 2.0], [2.0, 0.0]]), torch.tensor([[0.0, 0.0]]))
    tensor(2.)
    """
    return (f_real.mean(dim=0) - f_syn.mean(dim=0)).pow(2).sum()


class DistributionMatcher:
    """Mean-embedding matching on the network's penultimate features (``net.embed``)."""

    def __call__(
        self, net: nn.Module, x_real: Tensor, y_real: Tensor, x_syn: Tensor, y_syn: Tensor
    ) -> Tensor:
        """Matching loss; labels are unused (one class per call)."""
        del y_real, y_syn
        f_real = net.embed(x_real).detach()
        return mean_embedding_distance(f_real, net.embed(x_syn))
