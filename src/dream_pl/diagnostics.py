"""The paper's analysis quantities as pure functions: MMD between feature sets, per-sample gradient norms.

Fig. 2(c) compares the MMD between the matched real batch and its whole class for DREAM vs random
batches; Fig. 1(a) and Fig. 3 compare the gradient norms of selected and random samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from dream_pl.data import RealSet
from dream_pl.features import embed_class
from dream_pl.matchers import gradient_distance

if TYPE_CHECKING:
    from dream_pl.samplers import Sampler


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


def conv_gradient(net: nn.Module, x: Tensor, y: Tensor, chunk: int = 256) -> Tensor:
    """Mean cross-entropy gradient of the conv weights on (x, y), flattened: what gradient matching compares.

    Computed in chunks (weighted by their size), so a whole class fits in memory; the network's own
    ``.grad`` fields are untouched.
    """
    params = [p for p in net.parameters() if p.dim() == 4]
    total = [torch.zeros_like(p) for p in params]
    for xs, ys in zip(x.split(chunk), y.split(chunk), strict=True):
        loss = F.cross_entropy(net(xs), ys, reduction="sum")
        for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
            acc += g
    return torch.cat([g.flatten() for g in total]) / len(y)


def class_diagnostics(
    net: nn.Module, real: RealSet, sampler: Sampler, g: torch.Generator, c: int, *, reference: int
) -> dict[str, Tensor]:
    """Class ``c``'s sampler batch vs a random batch of the same size.

    ``reference`` random images of the class stand for the whole class. ``mmd_*``: RBF MMD^2 of each batch
    to the reference in the network's feature space (Fig. 2c). ``graddist_*``: L1 distance of each batch's
    conv-weight gradient to the reference's (what a representative batch should be close to; Fig. 3).
    ``gn_*``: per-sample gradient norms of every image of the batches (Fig. 1a).
    """
    device = real.images.device
    selected = sampler.indices(real, c, g).to(device)
    random = real.sample_class(c, len(selected), g).to(device)
    ref = real.sample_class(c, min(reference, real.class_sizes[c]), g).to(device)
    inputs = getattr(sampler, "features", "normalized")  # the space the selection was made in
    feats = embed_class(net, real, c, indices=torch.cat([ref, selected, random]), inputs=inputs)
    f_ref, f_sel, f_rnd = feats.split([len(ref), len(selected), len(random)])
    sigma = median_bandwidth(f_ref)
    x_sel, x_rnd = real.class_images(c, selected), real.class_images(c, random)
    y = torch.full((len(selected),), c, device=device)
    g_ref = conv_gradient(net, real.class_images(c, ref), torch.full((len(ref),), c, device=device))
    return {
        "mmd_selected": mmd2_rbf(f_sel, f_ref, sigma),
        "mmd_random": mmd2_rbf(f_rnd, f_ref, sigma),
        "graddist_selected": gradient_distance(g_ref, conv_gradient(net, x_sel, y), "l1"),
        "graddist_random": gradient_distance(g_ref, conv_gradient(net, x_rnd, y), "l1"),
        "gn_selected": per_sample_grad_norms(net, x_sel, y),
        "gn_random": per_sample_grad_norms(net, x_rnd, y),
    }


def stack_diagnostics(per_class: dict[int, dict[str, Tensor]]) -> dict[str, Tensor]:
    """Classes' diagnostics in class order: [classes] per statistic, gradient norms concatenated.

    Adds ``graddist_ratio``, selected / random (< 1: the selection is more representative than chance).
    """
    if not per_class:
        return {}
    rows = [per_class[c] for c in sorted(per_class)]
    out = {k: torch.cat([r[k] for r in rows]) if k.startswith("gn") else torch.stack([r[k] for r in rows])
           for k in rows[0]}  # fmt: skip
    out["graddist_ratio"] = out["graddist_selected"] / out["graddist_random"]
    return out


def per_class_diagnostics(
    net: nn.Module,
    real: RealSet,
    sampler: Sampler,
    streams: Callable[[int], torch.Generator],
    *,
    max_classes: int,
    reference: int,
    classes: Sequence[int] | None = None,
) -> dict[int, dict[str, Tensor]]:
    """:func:`class_diagnostics` of each of the first ``max_classes`` classes (of ``classes`` if given).

    Class c draws from ``streams(c)``, so its values do not depend on which other classes are analysed
    (a process of a sharded run analyses its own classes and the results are merged). The network is
    evaluated in eval mode and left as found.
    """
    was_training = net.training
    net.eval()
    wanted = [c for c in range(min(max_classes, real.num_classes)) if classes is None or c in classes]
    per_class = {c: class_diagnostics(net, real, sampler, streams(c), c, reference=reference) for c in wanted}
    net.train(was_training)
    return per_class
