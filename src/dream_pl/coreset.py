"""Classic coreset selection rules on feature vectors (herding, k-center), as pure functions."""

from __future__ import annotations

import torch
from torch import Tensor


def herding(features: Tensor, k: int) -> Tensor:
    """Greedy herding (Welling 2009): pick points whose running mean tracks the class mean.

    Args:
        features: [M, D].
        k: how many points, k <= M.

    Returns:
        [k] distinct indices in selection order.
    """
    m = features.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"herding needs 1 <= k <= M, got k={k}, M={m}")
    mu = features.mean(dim=0)
    taken = torch.zeros(m, dtype=torch.bool, device=features.device)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    for t in range(1, k + 1):
        # distance of the new running mean (if point i were added) to the class mean
        candidate = (running * (t - 1) + features) / t
        dist = (candidate - mu).pow(2).sum(dim=1).masked_fill(taken, float("inf"))
        i = int(dist.argmin())
        chosen.append(i)
        taken[i] = True
        running = candidate[i]
    return torch.tensor(chosen, device=features.device)


def kcenter(features: Tensor, k: int, *, seed: int = 0) -> Tensor:
    """Greedy k-center (Sener & Savarese 2018): repeatedly add the point farthest from the chosen set.

    The first point is drawn with a local generator seeded by ``seed``.

    Returns:
        [k] distinct indices in selection order.
    """
    m = features.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"kcenter needs 1 <= k <= M, got k={k}, M={m}")
    first = int(torch.randint(m, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    nearest = (features - features[first]).pow(2).sum(dim=1)
    nearest[first] = -1.0  # distances are >= 0, so -1 marks a taken point (duplicates stay distinct)
    for _ in range(k - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, (features - features[i]).pow(2).sum(dim=1))
        nearest[chosen] = -1.0
    return torch.tensor(chosen, device=features.device)
