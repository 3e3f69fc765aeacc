"""Where an inner step's time goes: wall time per part, and the GPU kernels behind it.

Builds the engine ``benchmarks/step.py`` builds (random sampler, the dataset's paper recipe), warms it up,
then reports milliseconds per step for the whole step and its two halves (matching: real-index prologue +
matching pass + image step; network: the n_data / batch_real updates), replayed from CUDA graphs
(``GraphRunner``) and eagerly, plus the total GPU kernel time of one eager step from ``torch.profiler``: the
part a graph replay cannot remove. Prints the kernels that take longest.
Run: python benchmarks/profile_step.py [--steps 10] [--top 12] [--cluster]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from step import engine_for, real_set, sync
from torch.autograd import DeviceType
from torch.autograd.profiler_util import EventList
from torch.profiler import ProfilerActivity, profile

from dream_pl.data import RealSet
from dream_pl.engine import Engine, eager


def parts_ms(engine: Engine, steps: int, device: str) -> tuple[float, float, float]:
    """(step, matching half, network half) in ms per step, each timed over ``steps`` steps from step 1."""

    def match(step: int) -> None:
        engine.match_and_step(step, engine.image_opt.step)

    results = []
    for fn in (engine.step, match, engine.train_network):
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


def kernel_ms(engine: Engine, device: str, top: int) -> tuple[float, str]:
    """GPU kernel time of one eager step (ms) and a table of the longest kernels."""
    runner, engine.run = engine.run, eager
    engine.step(1)
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.step(2)
        sync(device)
    engine.run = runner
    events = prof.key_averages()
    total = kernel_total(events)
    table = events.table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=60)
    return total, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default=os.environ.get("DREAM_DATA_DIR"))
    parser.add_argument("--cluster", action="store_true", help="also break a clustering event down")
    args = parser.parse_args()
    args.interval, args.embed_chunk, args.embed_subset, args.warmup = 10_000, 512, 0, 3
    real = real_set(args)
    engine = engine_for("random", args.device == "cuda", args, real)
    for step in range(1, 1 + args.warmup):
        engine.step(step)
    graphs = parts_ms(engine, args.steps, args.device)
    runner, engine.run = engine.run, eager
    unreplayed = parts_ms(engine, args.steps, args.device)
    engine.run = runner
    kernels, table = kernel_ms(engine, args.device, args.top)
    del engine
    print(f"\nlongest GPU kernels of one eager step\n{table}")
    print(f"\n{args.dataset} IPC 10, ConvNet-3 w{args.width}, {args.device}, random sampler")
    print("| graphs: step / match / net ms | eager: step / match / net ms | GPU kernel ms/step |")
    print("|---|---|---|")
    replayed, plain = " / ".join(f"{v:.1f}" for v in graphs), " / ".join(f"{v:.1f}" for v in unreplayed)
    print(f"| {replayed} | {plain} | {kernels:.1f} |")
    if args.cluster:
        clustering(args, real)


def clustering(args: argparse.Namespace, real: RealSet) -> None:
    """A clustering event's parts: the embedding pass at several chunk sizes, the whole event, its kernels."""
    engine = engine_for("dream", True, args, real)
    engine.refresh_selection(0)
    sampler, classes = engine.sampler, range(real.num_classes)
    print("\n| embed_chunk | embedding pass ms (all classes) |\n|---|---|")
    for chunk in (512, 2048, 8192):
        sampler.embed_chunk = chunk
        sync(args.device)
        start = time.perf_counter()
        for c in classes:
            sampler.embed(engine.net, real, c, None)
        sync(args.device)
        print(f"| {chunk} | {1000 * (time.perf_counter() - start):.0f} |")
    sampler.embed_chunk = 512
    sync(args.device)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        engine.refresh_selection(10)
        sync(args.device)
    wall = 1000 * (time.perf_counter() - start)
    events = prof.key_averages()
    kernels = kernel_total(events)
    print(f"\nclustering event (profiled): wall {wall:.0f} ms, GPU kernels {kernels:.0f} ms")
    print(events.table(sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=60))


if __name__ == "__main__":
    main()
