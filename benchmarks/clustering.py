"""Seconds per clustering event (all classes) by K-means backend, and the embedding pass that precedes it.

Shapes from the issue: CIFAR-10-like (10 classes x 5,000 x 2,048, K=128) and CIFAR-100-like
(100 classes x 500 x 2,048, K=128). Features are Gaussian blobs (K-means work depends on the data only
through its Lloyd iteration count, which is printed). The embedding row times ConvNet-3 (width 128) on
5,000 3x32x32 images, the other half of a clustering event.
Run: python benchmarks/clustering.py [--device cpu|cuda] [--skip-100]
"""

from __future__ import annotations

import argparse
import time

import torch

from dream_pl.clustering import batched_kmeans, kmeans, nearest_to_centres
from dream_pl.models import create_model


def blobs(classes: int, m: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 32, d, generator=g) * 3
    which = torch.randint(32, (classes, m), generator=g)
    return torch.gather(centres, 1, which[..., None].expand(-1, -1, d)) + torch.randn(
        classes, m, d, generator=g
    )


def event(x: torch.Tensor, k: int, backend: str) -> tuple[float, float]:
    """Seconds for one clustering event over all classes and the mean Lloyd iteration count."""
    start = time.perf_counter()
    if backend == "torch-batched":
        results = batched_kmeans(x, k, seeds=list(range(len(x))))
    else:
        results = [kmeans(xc, k, backend=backend, seed=c) for c, xc in enumerate(x)]
    for xc, r in zip(x, results, strict=True):
        nearest_to_centres(xc, r.centroids, 1)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, sum(r.iterations for r in results) / len(results)


def embed_seconds(device: str, n: int = 5000, chunk: int = 512) -> dict[str, float]:
    net = create_model("convnet", channels=3, num_classes=10, size=32).to(device).eval()
    x = torch.randn(n, 3, 32, 32, device=device)
    out = {}
    for layout in ("contiguous", "channels_last"):
        xs = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
        with torch.inference_mode():
            net.embed(xs[:chunk])
            start = time.perf_counter()
            for part in xs.split(chunk):
                net.embed(part)
            if device == "cuda":
                torch.cuda.synchronize()
        out[layout] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-100", action="store_true", help="only the CIFAR-10-like shape")
    args = parser.parse_args()
    backends = ["faiss", "torch", "torch-batched"] if args.device == "cpu" else ["torch", "torch-batched"]
    shapes = [("CIFAR-10-like", 10, 5000)] + ([] if args.skip_100 else [("CIFAR-100-like", 100, 500)])
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {device}, threads {torch.get_num_threads()}")
    print("| shape | backend | seconds / event | Lloyd iterations |")
    print("|---|---|---|---|")
    for name, classes, m in shapes:
        x = blobs(classes, m, 2048).to(args.device)
        for backend in backends:
            seconds, iters = event(x, 128, backend)
            print(f"| {name} ({classes} x {m} x 2048, K=128) | {backend} | {seconds:.1f} | {iters:.0f} |")
    for layout, seconds in embed_seconds(args.device).items():
        print(f"| embed 5,000 images, ConvNet-3 w128 32px | {layout} | {seconds:.1f} | - |")


if __name__ == "__main__":
    main()
