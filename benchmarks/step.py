"""Milliseconds per inner step, random vs DREAM sampler, with and without CUDA graphs, in one process.

Paper-scale settings (the DREAM/IDC recipe of the dataset): IPC 10, factor 2, ConvNet-3 width 128 instance
norm, batch_real 128; DREAM clusters every --interval steps over each whole class. ``fashion_mnist`` reads the
real files; ``cifar10`` / ``cifar100`` time the same shapes on random uint8 tensors (3x32x32, 5,000 / 500
images per class, n_data 2,000, mse), which is all a timing needs. For each ``distill.cuda_graphs`` setting
(a GPU only: a CPU has nothing to capture) it runs --warmup steps (capture happens there, timed apart), then
times --steps inner steps through the engine's own ``step`` (no clustering event among them) and two
clustering events through ``refresh_selection`` (the first warms the embedding pass up; the second is
reported, split into embedding and K-means), and prints one table.
Run: python benchmarks/step.py [--dataset fashion_mnist] [--steps 20] [--device cuda]
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
from dream_pl.engine import Engine, eager
from dream_pl.graphs import GraphRunner
from dream_pl.workflow import engine_parts

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


def engine_for(sampler: str, graphs: bool, args: argparse.Namespace, real: RealSet) -> Engine:
    """The engine a ``dream_pl.train`` run would build, prepared on ``args.device``."""
    # random init: the step cost does not depend on where images start; K-means init embeds every image
    overrides = [
        f"dataset={args.dataset}",
        f"sampler={sampler}",
        f"model.width={args.width}",
        "ipc=10",
        "init=random",
    ]
    if sampler == "dream":  # no clustering event among the timed steps: the event is timed on its own
        quiet = args.warmup + args.steps + 1
        overrides += [f"sampler.interval={quiet}", f"sampler.embed_chunk={args.embed_chunk}"]
        if args.embed_subset:
            overrides.append(f"sampler.embed_subset={args.embed_subset}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    engine = Engine(**engine_parts(cfg, real, get_spec(args.dataset)), run=GraphRunner() if graphs else eager)
    engine.synthetic.to(args.device)
    engine.prepare()
    engine.initialize()
    return engine


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


def step_ms(engine: Engine, args: argparse.Namespace) -> tuple[float, float]:
    """(warm-up seconds, mean ms per timed step). Steps start at 1: no outer-iteration boundary is timed."""
    warm = timed(lambda: [engine.step(s) for s in range(1, 1 + args.warmup)], args.device)
    first = 1 + args.warmup
    total = timed(lambda: [engine.step(s) for s in range(first, first + args.steps)], args.device)
    return warm, 1000 * total / args.steps


def clustering_ms(engine: Engine, args: argparse.Namespace) -> tuple[float, float]:
    """(ms of a warm clustering event, ms of its embedding pass alone)."""
    engine.refresh_selection(0)  # warms the embedding pass and K-means up
    event = timed(lambda: engine.refresh_selection(args.interval), args.device)
    sampler, real = engine.sampler, engine.real
    cands = [sampler.candidates(real, c, 0) for c in range(real.num_classes)]  # embed_subset, if set
    embed = timed(lambda: [sampler.embed(engine.net, real, c, x) for c, x in enumerate(cands)], args.device)
    return 1000 * event, 1000 * embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", *SHAPES))
    parser.add_argument("--graphs", default="true,false", help="distill.cuda_graphs settings to time (GPU)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (capture happens here)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--interval", type=int, default=10, help="I_int the DREAM overhead is computed for")
    parser.add_argument("--embed-subset", type=int, default=0)
    parser.add_argument("--embed-chunk", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--matmul-precision", default="highest", choices=("highest", "high"))
    parser.add_argument("--data-dir", default=os.environ.get("DREAM_DATA_DIR"), help="dataset folder")
    args = parser.parse_args()
    torch.set_float32_matmul_precision(args.matmul_precision)
    real = real_set(args)
    settings = [g == "true" for g in args.graphs.split(",")] if args.device == "cuda" else [False]
    rows = []
    for graphs in settings:
        random_engine = engine_for("random", graphs, args, real)
        random_warm, random_step = step_ms(random_engine, args)
        dream = engine_for("dream", graphs, args, real)
        event, embed = clustering_ms(dream, args)
        dream_warm, dream_step = step_ms(dream, args)
        overhead = (dream_step + event / args.interval) / random_step - 1
        replayed = isinstance(dream.run, GraphRunner) and dream.run.enabled
        rows.append(("graphs" if replayed else "eager", random_step, dream_step, event, embed, overhead,
                     random_warm, dream_warm))  # fmt: skip
        del random_engine, dream
    print(
        f"\n{args.dataset} IPC 10, f 2, ConvNet-3 w{args.width}, {args.device}, "
        f"{torch.get_num_threads()} threads, matmul precision {args.matmul_precision}, {args.steps} timed "
        f"steps after {args.warmup} warm-up, I_int={args.interval}, embed_chunk {args.embed_chunk}"
    )
    print(
        "| step runs | random step ms | DREAM step ms (between events) | clustering event ms "
        "| of which embedding ms | DREAM overhead | warm-up s (random / DREAM) |"
    )
    print("|---|---|---|---|---|---|---|")
    for runs, rnd, drm, event, embed, overhead, rw, dw in rows:
        print(
            f"| {runs} | {rnd:.1f} | {drm:.1f} | {event:.0f} | {embed:.0f} "
            f"| {100 * overhead:+.1f}% | {rw:.1f} / {dw:.1f} |"
        )


if __name__ == "__main__":
    main()
