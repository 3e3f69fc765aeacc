"""The paper's analysis quantities as pure functions: MMD between feature sets, per-sample gradient norms.

Fig. 2(c) compares the MMD between the matched real batch and its whole class for DREAM vs random
batches; Fig. 1(a) and Fig. 3 compare the gradient norms of selected and random samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from dream_pl.data import RealSet
from dream_pl.features import embed_class

if TYPE_CHECKING:
    from dream_pl.samplers import Sampler


def mmd2_linear(x: Tensor, y: Tensor) -> Tensor:
    """Linear-kernel MMD^2 = ||mean(x) - mean(y)||^2 between feature sets x: [n, D] and y: [m, D].

    >>> mmd2_linear(torch.tensor([[0.0], [2.0]]), torch.tensor([[4.0]]))
    tensor(9.)
    """
    return (x.mean(0) - y.mean(0)).pow(2).sum()


def mmd2_rbf(x: Tensor, y: Tensor, sigma: float) -> Tensor:
    """Biased Gaussian-kernel MMD^2: mean k(x, x') + mean k(y, y') - 2 mean k(x, y).

    k(a, b) = exp(-||a - b||^2 / (2 sigma^2)). Zero when the two sets are the same multiset.
    """
    gamma = 1.0 / (2 * sigma**2)

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-gamma * torch.cdist(a, b).pow(2)).mean()

    return k(x, x) + k(y, y) - 2 * k(x, y)


def median_bandwidth(x: Tensor) -> float:
    """Median pairwise distance of x (the usual MMD bandwidth heuristic); 1.0 for degenerate sets."""
    d = torch.pdist(x)
    med = float(d.median()) if d.numel() else 0.0
    return med if med > 0 else 1.0


def per_sample_grad_norms(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """L2 norm over all parameters of each sample's cross-entropy gradient: [B].

    Uses ``torch.func`` (one vmapped grad); the network must not update batch-norm statistics
    (call it in eval mode).
    """
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_call(net, (p, buffers), (xi[None],))
        return F.cross_entropy(logits, yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))


def selection_diagnostics(
    net: nn.Module,
    real: RealSet,
    sampler: Sampler,
    g: torch.Generator,
    *,
    max_classes: int,
    reference: int,
) -> dict[str, Tensor]:
    """The sampler's batch vs a random batch of the same size, for the first ``max_classes`` classes.

    ``mmd_*``: [classes] RBF MMD^2 of each batch to ``reference`` random images of the class standing for
    the whole class, in the network's feature space (Fig. 2c). ``gn_*``: per-sample gradient norms of
    every image of the batches (Fig. 1a, Fig. 3). The network is evaluated in eval mode and left as found.
    """
    stats: dict[str, list[Tensor]] = {
        k: [] for k in ("mmd_selected", "mmd_random", "gn_selected", "gn_random")
    }
    was_training = net.training
    net.eval()
    device = real.images.device
    for c in range(min(max_classes, real.num_classes)):
        selected = sampler.indices(real, c, g).to(device)
        random = real.sample_class(c, len(selected), g).to(device)
        ref = real.sample_class(c, min(reference, real.class_sizes[c]), g).to(device)
        feats = embed_class(net, real, c, indices=torch.cat([ref, selected, random]))
        f_ref, f_sel, f_rnd = feats.split([len(ref), len(selected), len(random)])
        sigma = median_bandwidth(f_ref)
        stats["mmd_selected"].append(mmd2_rbf(f_sel, f_ref, sigma))
        stats["mmd_random"].append(mmd2_rbf(f_rnd, f_ref, sigma))
        y = torch.full((len(selected),), c, device=device)
        stats["gn_selected"].append(per_sample_grad_norms(net, real.class_images(c, selected), y))
        stats["gn_random"].append(per_sample_grad_norms(net, real.class_images(c, random), y))
    net.train(was_training)
    return {k: torch.stack(v) if k.startswith("mmd") else torch.cat(v) for k, v in stats.items()}
