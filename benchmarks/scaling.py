"""The scale-out cost model's constants, measured, and its predictions beside what k processes measure.

docs/scaling.md's model of one inner step on k processes (K classes, a clustering event every I steps):

    t(k) = ceil(K / k) * (m + e / I) + n_f + (n - n_f) / k + a(k)

m: matching time of one class; e: one class's share of a clustering event; n: the network's updates of one
step; n_f: the part of them every process still does whole (batch assembly, augmentation, CutMix); a(k): the
collectives (0 for k = 1). This script measures m, e, n and n_f in one process, then runs the same DREAM
distillation (the engine's own ``step`` and ``refresh_selection``) on 1 and on k gloo processes with
the same thread count each, times a(k) with the step's own collectives at its sizes, and prints the
measured seconds per step beside the model's, then the model's predictions for 1 / 8 / 64 processes at
CIFAR-100, TinyImageNet and ImageNet-1K class counts (compute terms; a(k) is only measured where it runs).

The real set is a seeded random uint8 stand-in of the dataset's shape (``--classes`` classes of
``--per-class`` images), which is all a timing needs; the network is the dataset's (its class count).
Run: python benchmarks/scaling.py [--dataset cifar100] [--classes 10] [--processes 1,2] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from step import stand_in

from dream_pl.augment import cutmix_static
from dream_pl.config import CONF_DIR
from dream_pl.data import get_spec
from dream_pl.engine import Engine
from dream_pl.seeding import generator
from dream_pl.sharding import Shard
from dream_pl.workflow import engine_parts

CONVNET4 = ["model=convnet4", "distill.batch_real=64", "sampler.n_clusters=64"]  # DREAM's 64 px recipe
PRESETS = {  # dataset -> (hydra overrides of DREAM's recipe there, images per class of the real dataset)
    "cifar100": (["dataset=cifar100"], 500),
    "tiny_imagenet": (["dataset=tiny_imagenet", *CONVNET4], 500),
    "imagenet": (["dataset=imagenet", *CONVNET4], 1300),
}
TARGETS = {
    "CIFAR-100": ("cifar100", 100),
    "TinyImageNet": ("tiny_imagenet", 200),
    "ImageNet-1K": ("imagenet", 1000),
}


def build(args: argparse.Namespace) -> Engine:
    """DREAM's engine for the preset on a random stand-in of ``--classes`` classes, prepared and initialised
    (sharded if a process group exists)."""
    overrides, _ = PRESETS[args.dataset]
    overrides = [
        *overrides,
        "sampler=dream",
        "init=random",
        f"sampler.interval={args.interval}",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    spec = get_spec(cfg.dataset.name)
    parts = engine_parts(cfg, stand_in(spec, args.classes, args.per_class), spec)
    engine = Engine(**parts, collectives=Shard.current(args.classes))
    engine.prepare()
    engine.initialize()
    return engine


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def network_fixed_s(engine: Engine) -> float:
    """n_f: what every process does whole in one step's network updates (batch, augmentation, CutMix)."""
    cfg = engine.cfg
    g = generator(cfg.seed, "nf", device=engine.device)

    def updates() -> None:
        for _ in range(math.ceil(cfg.n_data / cfg.batch_real)):
            x, y = engine.real.sample(cfg.batch_real, g)
            x = engine.net_aug(x, shared=False, generator=g, static=True)
            cutmix_static(x, y, cfg.net_cutmix_p, generator=g)

    updates()
    return timed(updates)


def collectives_s(engine: Engine, repeats: int = 5) -> float:
    """a(k): one step's collectives at their sizes (losses; per network update the batch, the gradients
    and the weights' broadcast), timed on this process group."""
    cfg, shard = engine.cfg, engine.shard
    params = [p.detach().clone() for p in engine.net.parameters()]
    losses = torch.zeros(engine.real.num_classes)
    batch = torch.zeros(cfg.batch_real, *engine.real.images.shape[1:])

    def one_step() -> None:
        shard.sum_(losses)
        for _ in range(math.ceil(cfg.n_data / cfg.batch_real)):
            shard.sum_(batch)
            for p in params:
                shard.sum_(p)
            shard.broadcast_(params)

    one_step()
    return sum(timed(one_step) for _ in range(repeats)) / repeats


def resident_mb() -> float:
    """This process's resident memory now (VmRSS): after the steps, what it holds in steady state."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def held_mb(engine: Engine) -> float:
    """The class-dependent tensors this process holds: its real images, stored images and their momentum."""
    images = engine.synthetic.images
    momentum = engine.image_opt.state.get(images, {}).get("momentum_buffer")
    held = [engine.real.images, images, *([momentum] if isinstance(momentum, torch.Tensor) else [])]
    return sum(t.nbytes for t in held) / 2**20


def run(rank: int, world: int, args: argparse.Namespace, out: Path) -> None:
    """One process of a k-process run: a clustering event and ``--steps`` inner steps, timed."""
    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{out}/group{world}", rank=rank, world_size=world)
    engine = build(args)
    engine.refresh_selection(0)  # warms the embedding pass and K-means up
    event = timed(lambda: engine.refresh_selection(args.interval))
    engine.step(1)  # warm-up
    rows = []
    for step in range(2, 2 + args.steps):  # (an event only at inner 0 and multiples of I: none here)
        start = time.perf_counter()
        logged = engine.step(step)
        rows.append((time.perf_counter() - start, logged["time/match_s"], logged["time/net_s"]))
    result = {
        "event": event,
        "step": sum(r[0] for r in rows) / len(rows),
        "match": sum(r[1] for r in rows) / len(rows),
        "net": sum(r[2] for r in rows) / len(rows),
        "own": len(engine.shard.classes),
        "held_mb": held_mb(engine),
        "rss_mb": resident_mb(),
    }
    if world == 1:
        result["n_f"] = network_fixed_s(engine)
    else:
        result["a"] = collectives_s(engine)
        dist.destroy_process_group()
    torch.save(result, out / f"k{world}_rank{rank}.pt")


def predicted(c: dict[str, float], classes: int, k: int, interval: int, a: float = 0.0) -> float:
    """The model's seconds per step (clustering amortised over I steps)."""
    return math.ceil(classes / k) * (c["m"] + c["e"] / interval) + c["n_f"] + (c["n"] - c["n_f"]) / k + a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar100", choices=tuple(PRESETS))
    parser.add_argument("--classes", type=int, default=10, help="classes of the stand-in real set")
    parser.add_argument(
        "--per-class", type=int, default=None, help="images per class (default: the dataset's)"
    )
    parser.add_argument("--processes", default="1,2", help="comma-separated k (1 gives the constants)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--interval", type=int, default=10, help="I: inner steps between clustering events")
    args = parser.parse_args()
    args.per_class = args.per_class or PRESETS[args.dataset][1]
    ks = sorted({1, *(int(k) for k in args.processes.split(","))})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        results = {}
        for k in ks:
            torch.multiprocessing.spawn(run, args=(k, args, out), nprocs=k)
            results[k] = [torch.load(out / f"k{k}_rank{r}.pt") for r in range(k)]
    one = results[1][0]
    c = {
        "m": one["match"] / args.classes,
        "e": one["event"] / args.classes,
        "n": one["net"],
        "n_f": one["n_f"],
    }
    print(
        f"\n{args.dataset} shapes (DREAM's recipe), stand-in of {args.classes} classes x {args.per_class} "
        "images, "
        f"{args.threads} thread(s) per process, CPU, I = {args.interval}, {args.steps} timed steps"
    )
    print(
        f"constants (k = 1): m = {c['m']:.3f} s per class, e = {c['e']:.3f} s per class and event, "
        f"n = {c['n']:.3f} s, n_f = {c['n_f']:.3f} s"
    )
    print(
        "| k | own classes (rank 0) | matching s | network s | clustering event s | a(k) s "
        "| measured s per step (events amortised) | predicted | held MB per process | VmRSS MB per process |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    fit = "(the constants' run)"
    for k in ks:
        r = results[k][0]
        a = max(p.get("a", 0.0) for p in results[k])
        measured = r["step"] + r["event"] / args.interval
        model = fit if k == 1 else f"{predicted(c, args.classes, k, args.interval, a):.2f}"

        def per_process(key: str, spec: str, k: int = k) -> str:
            return " / ".join(format(part[key], spec) for part in results[k])

        print(
            f"| {k} | {r['own']} | {r['match']:.2f} | {r['net']:.2f} | {r['event']:.2f} | {a:.3f} "
            f"| {measured:.2f} | {model} | {per_process('held_mb', '.1f')} | {per_process('rss_mb', '.0f')} |"
        )
    target = next(name for name, (key, _) in TARGETS.items() if key == args.dataset)
    classes = TARGETS[target][1]
    print(f"\npredicted s per step at {target}'s {classes} classes from these constants (without a(k)):")
    print("| k = 1 | k = 8 | k = 64 |\n|---|---|---|")
    print("| " + " | ".join(f"{predicted(c, classes, k, args.interval):.1f}" for k in (1, 8, 64)) + " |")


if __name__ == "__main__":
    main()
