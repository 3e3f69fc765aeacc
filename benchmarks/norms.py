"""Instance normalisation three ways, timed as gradient matching uses it: forward, backward, double backward.

ConvNet's instance norm is ``GroupNorm(C, C)``; its CUDA kernels were ~20% of an H200 matching step
(benchmarks/profile_step.py). This compares it with ``F.instance_norm`` (batch-norm kernels on an
[1, N*C, H, W] view) and a composite of ``var_mean`` and element-wise ops, on the first layer's activation
of one matching pass (10 classes x 168 images, 128 channels, 32 x 32), and checks that all three agree.
Run: python benchmarks/norms.py [--device cuda] [--repeat 20]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def group_norm(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return F.group_norm(x, x.shape[1], w, b, eps=1e-5)


def instance_norm(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return F.instance_norm(x, weight=w, bias=b, eps=1e-5)


def composite(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + 1e-5) * w[:, None, None] + b[:, None, None]


def second_order(norm: Callable[..., Tensor], x: Tensor, w: Tensor, b: Tensor, probe: Tensor) -> Tensor:
    """d/dx of ||d<norm(x), probe>/dw||^2: a forward, a create_graph backward and a double backward."""
    (g,) = torch.autograd.grad((norm(x, w, b) * probe).sum(), w, create_graph=True)
    return torch.autograd.grad(g.pow(2).sum(), x)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=1680)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    g = torch.Generator(device=args.device).manual_seed(0)
    shape = (args.images, 128, args.side, args.side)
    x = torch.randn(shape, generator=g, device=args.device, requires_grad=True)
    probe = torch.randn(shape, generator=g, device=args.device)
    w = torch.rand(128, generator=g, device=args.device).add_(0.5).requires_grad_()
    b = torch.randn(128, generator=g, device=args.device)
    reference = second_order(group_norm, x, w, b, probe)
    print(f"\ninstance norm on {list(shape)}, {args.device}: forward + backward + double backward")
    print("| formulation | ms | max rel. difference to GroupNorm |\n|---|---|---|")
    for name, norm in (
        ("GroupNorm(C, C)", group_norm),
        ("F.instance_norm", instance_norm),
        ("var_mean", composite),
    ):
        out = second_order(norm, x, w, b, probe)
        diff = float((out - reference).abs().max() / reference.abs().max())
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.repeat):
            second_order(norm, x, w, b, probe)
        if args.device == "cuda":
            torch.cuda.synchronize()
        print(f"| {name} | {1000 * (time.perf_counter() - start) / args.repeat:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
