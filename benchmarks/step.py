"""Milliseconds per inner step, random vs DREAM sampler, per ``distill.compile`` mode, in one process.

Paper-scale settings (the DREAM/IDC recipe of the dataset): IPC 10, factor 2, ConvNet-3 width 128 instance
norm, batch_real 128; DREAM clusters every --interval steps over each whole class. ``fashion_mnist`` reads the
real files; ``cifar10`` / ``cifar100`` time the same shapes on random uint8 tensors (3x32x32, 5,000 / 500
images per class, n_data 2,000, mse), which is all a timing needs. For each compile mode (``off``: the
host-decided step; ``on``: the capturable step, replayed from CUDA graphs on a GPU) it runs --warmup steps
(capture happens there, timed apart), then times --steps steps through the module's own ``distill_step``
and two clustering events through ``refresh_selection`` (the first warms the embedding pass up; the second is
reported, split into embedding and K-means), and prints one table.
Run: python benchmarks/step.py [--dataset fashion_mnist] [--compile off,on] [--steps 20] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from hydra import compose, initialize_config_dir

from dream_pl.config import CONF_DIR
from dream_pl.data import DatasetSpec, RealSet, get_spec, load_dataset
from dream_pl.distill import DistillModule
from dream_pl.workflow import build_module

SHAPES = {"cifar10": 5000, "cifar100": 500}  # images per class of the random stand-in sets


def real_set(args: argparse.Namespace) -> RealSet:
    """FashionMNIST from disk, or a random uint8 set of a CIFAR shape (seeded)."""
    if args.dataset not in SHAPES:
        data = load_dataset(args.dataset, args.data_dir)
        return RealSet.from_data(data, device=args.device)
    spec = get_spec(args.dataset)
    return stand_in(spec, spec.num_classes, SHAPES[args.dataset], args.device)


def stand_in(spec: DatasetSpec, classes: int, per_class: int, device: str = "cpu") -> RealSet:
    """A seeded random uint8 set of ``spec``'s image shape: ``classes`` classes of ``per_class`` images."""
    g = torch.Generator().manual_seed(0)
    shape = (classes * per_class, spec.channels, spec.size, spec.size)
    images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return RealSet(images, labels, spec.mean, spec.std, device, classes)


def module_for(sampler: str, mode: str, args: argparse.Namespace, real: RealSet) -> DistillModule:
    """The module a ``dream_pl.train`` run would build, prepared on ``args.device``."""
    # random init: the step cost does not depend on where images start; K-means init embeds every image
    overrides = [
        f"dataset={args.dataset}",
        f"sampler={sampler}",
        f"model.width={args.width}",
        "ipc=10",
        "init=random",
        f"distill.compile={mode}",
        f"distill.class_chunk={'null' if args.class_chunk is None else args.class_chunk}",
    ]
    if sampler == "dream":
        overrides += [f"sampler.interval={args.interval}", f"sampler.embed_chunk={args.embed_chunk}"]
        if args.embed_subset:
            overrides.append(f"sampler.embed_subset={args.embed_subset}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    module = build_module(cfg, real, get_spec(args.dataset)).to(args.device)
    module.prepare()
    return module


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds of ``fn()``, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def step_ms(module: DistillModule, args: argparse.Namespace) -> tuple[float, float]:
    """(warm-up seconds, mean ms per timed step). Steps start at 1: no outer-iteration boundary is timed."""
    warm = timed(lambda: [module.distill_step(s) for s in range(1, 1 + args.warmup)], args.device)
    first = 1 + args.warmup
    total = timed(lambda: [module.distill_step(s) for s in range(first, first + args.steps)], args.device)
    return warm, 1000 * total / args.steps


def clustering_ms(module: DistillModule, args: argparse.Namespace) -> tuple[float, float]:
    """(ms of a warm clustering event, ms of its embedding pass alone)."""
    module.refresh_selection(0)  # warms the embedding pass and K-means up
    event = timed(lambda: module.refresh_selection(args.interval), args.device)
    sampler, real = module.sampler, module.real
    cands = [sampler.candidates(real, c, 0) for c in range(real.num_classes)]  # embed_subset, if set
    embed = timed(lambda: [sampler.embed(module.net, real, c, x) for c, x in enumerate(cands)], args.device)
    return 1000 * event, 1000 * embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", *SHAPES))
    parser.add_argument("--compile", default="off,on", help="comma-separated distill.compile modes")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (capture happens here)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--embed-subset", type=int, default=0)
    parser.add_argument("--embed-chunk", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--class-chunk", type=int, default=None, help="distill.class_chunk (default: auto)")
    parser.add_argument("--matmul-precision", default="highest", choices=("highest", "high"))
    parser.add_argument("--data-dir", default=os.environ.get("DREAM_DATA_DIR"), help="dataset folder")
    args = parser.parse_args()
    torch.set_float32_matmul_precision(args.matmul_precision)
    real = real_set(args)
    rows = []
    for mode in args.compile.split(","):
        random_module = module_for("random", mode, args, real)
        random_warm, random_step = step_ms(random_module, args)
        dream = module_for("dream", mode, args, real)
        event, embed = clustering_ms(dream, args)
        dream_warm, dream_step = step_ms(dream, args)
        overhead = (dream_step + event / args.interval) / random_step - 1
        graphs = "graphs" if dream.capture else ("eager, capturable" if dream.static else "eager")
        rows.append((mode, graphs, random_step, dream_step, event, embed, overhead, random_warm, dream_warm))
        del random_module, dream
    chunk = module_for("random", "off", args, real).class_chunk()
    print(
        f"\n{args.dataset} IPC 10, f 2, ConvNet-3 w{args.width}, {args.device}, "
        f"{torch.get_num_threads()} threads, "
        f"class_chunk {chunk}, matmul precision {args.matmul_precision}, {args.steps} timed steps after "
        f"{args.warmup} warm-up, I_int={args.interval}, embed_chunk {args.embed_chunk}"
    )
    print(
        "| compile | step runs | random step ms | DREAM step ms (between events) | clustering event ms "
        "| of which embedding ms | DREAM overhead | warm-up s (random / DREAM) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode, graphs, rnd, drm, event, embed, overhead, rw, dw in rows:
        print(
            f"| {mode} | {graphs} | {rnd:.1f} | {drm:.1f} | {event:.0f} | {embed:.0f} "
            f"| {100 * overhead:+.1f}% | {rw:.1f} / {dw:.1f} |"
        )


if __name__ == "__main__":
    main()
