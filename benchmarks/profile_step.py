"""Where an inner step's time goes: wall time per part, and the GPU kernels behind it.

For each ``distill.class_chunk`` given, builds the module ``benchmarks/step.py`` builds (random sampler,
the dataset's paper recipe), warms it up, then reports milliseconds per step for the whole step and its two
halves (matching: real-index prologue + matching pass + image step; network: the n_data / batch_real
updates), with CUDA graphs (``distill.compile=on``) and eagerly, plus the total GPU kernel time of one eager
step from ``torch.profiler``: the part a graph replay cannot remove. Prints the kernels that take longest.
Run: python benchmarks/profile_step.py [--chunks 1,10] [--steps 10] [--top 12]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from step import module_for, real_set, sync
from torch.autograd import DeviceType
from torch.autograd.profiler_util import EventList
from torch.profiler import ProfilerActivity, profile

from dream_pl.data import RealSet
from dream_pl.distill import DistillModule


def parts_ms(module: DistillModule, steps: int, device: str) -> tuple[float, float, float]:
    """(step, matching half, network half) in ms per step, each timed over ``steps`` steps from step 1."""
    opt = module._image_optimizer()

    def match(step: int) -> None:
        opt.zero_grad()
        module._match_static(step)
        opt.step()

    results = []
    for fn in (module.distill_step, match, module._train_net_static):
        sync(device)
        start = time.perf_counter()
        for step in range(1, steps + 1):
            fn(step)
        sync(device)
        results.append(1000 * (time.perf_counter() - start) / steps)
    return results[0], results[1], results[2]


def kernel_total(events: EventList) -> float:
    """Milliseconds of GPU kernels (device-side events only: an op's CUDA time is its kernels' time again)."""
    return sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1000


def kernel_ms(module: DistillModule, device: str, top: int) -> tuple[float, str]:
    """GPU kernel time of one eager step (ms) and a table of the longest kernels."""
    capture = module.capture
    module.capture = False
    module.distill_step(1)
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        module.distill_step(2)
        sync(device)
    module.capture = capture
    events = prof.key_averages()
    total = kernel_total(events)
    table = events.table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=60)
    return total, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--chunks", default="1,10", help="distill.class_chunk values")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default=os.environ.get("DREAM_DATA_DIR"))
    parser.add_argument("--cluster", action="store_true", help="also break a clustering event down")
    args = parser.parse_args()
    args.interval, args.embed_chunk, args.embed_subset, args.warmup = 10, 512, 0, 3
    real = real_set(args)
    rows, tables = [], []
    for chunk in (int(c) for c in args.chunks.split(",")):
        args.class_chunk = chunk
        module = module_for("random", "on", args, real)
        for step in range(1, 1 + args.warmup):
            module.distill_step(step)
        graphs = parts_ms(module, args.steps, args.device)
        module.capture = False
        eager = parts_ms(module, args.steps, args.device)
        module.capture = True
        kernels, table = kernel_ms(module, args.device, args.top)
        rows.append((chunk, graphs, eager, kernels))
        tables.append((chunk, table))
        del module
    for chunk, table in tables:
        print(f"\nclass_chunk {chunk}: longest GPU kernels of one eager step\n{table}")
    print(f"\n{args.dataset} IPC 10, ConvNet-3 w{args.width}, {args.device}, random sampler, capturable step")
    print(
        "| class_chunk | graphs: step / match / net ms | eager: step / match / net ms | GPU kernel ms/step |"
    )
    print("|---|---|---|---|")
    for chunk, g, e, k in rows:
        graphs, eager = " / ".join(f"{v:.1f}" for v in g), " / ".join(f"{v:.1f}" for v in e)
        print(f"| {chunk} | {graphs} | {eager} | {k:.1f} |")
    if args.cluster:
        clustering(args, real)


def clustering(args: argparse.Namespace, real: RealSet) -> None:
    """A clustering event's parts: the embedding pass at several chunk sizes, the whole event, its kernels."""
    args.class_chunk = None
    module = module_for("dream", "on", args, real)
    module.refresh_selection(0)
    sampler, classes = module.sampler, range(real.num_classes)
    print("\n| embed_chunk | embedding pass ms (all classes) |\n|---|---|")
    for chunk in (512, 2048, 8192):
        sampler.embed_chunk = chunk
        sync(args.device)
        start = time.perf_counter()
        for c in classes:
            sampler.embed(module.net, real, c, None)
        sync(args.device)
        print(f"| {chunk} | {1000 * (time.perf_counter() - start):.0f} |")
    sampler.embed_chunk = 512
    sync(args.device)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        module.refresh_selection(10)
        sync(args.device)
    wall = 1000 * (time.perf_counter() - start)
    events = prof.key_averages()
    kernels = kernel_total(events)
    print(f"\nclustering event (profiled): wall {wall:.0f} ms, GPU kernels {kernels:.0f} ms")
    print(events.table(sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=60))


if __name__ == "__main__":
    main()
