"""Seconds per inner step with the random vs the DREAM sampler, in one process, on real FashionMNIST.

Paper-scale settings by default (the DREAM/IDC FashionMNIST recipe): IPC 10, factor 2, ConvNet-3 width 128
instance norm, batch_real 128, n_data 500, l1 matching; DREAM clusters every 10 steps over each whole class
(~6,000 images). Times --steps inner steps per sampler through the module's own ``distill_step``, plus one
clustering event through ``refresh_selection``, and prints the overhead of DREAM over random sampling at
I_int = 10.
Run: python benchmarks/step.py [--steps 3] [--width 128] [--embed-subset N]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from hydra import compose, initialize_config_dir

from dream_pl.config import CONF_DIR
from dream_pl.data import DatasetSpec, RealSet, load_dataset
from dream_pl.distill import DistillModule
from dream_pl.workflow import build_module


def module_for(sampler: str, args: argparse.Namespace, real: RealSet, spec: DatasetSpec) -> DistillModule:
    """The module a ``dream_pl.train`` run would build, prepared on ``args.device``."""
    # random init: the step cost does not depend on where images start; K-means init embeds every image
    overrides = [
        "dataset=fashion_mnist",
        f"sampler={sampler}",
        f"model.width={args.width}",
        "ipc=10",
        "init=random",
        f"distill.class_chunk={'null' if args.class_chunk is None else args.class_chunk}",
    ]
    if sampler == "dream" and args.embed_subset:
        overrides.append(f"sampler.embed_subset={args.embed_subset}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    module = build_module(cfg, real, spec).to(args.device)
    module.prepare()
    return module


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(module: DistillModule, steps: int, device: str) -> float:
    """Mean seconds of ``distill_step`` (steps 1.., so no outer-iteration boundary work is counted twice)."""
    sync(device)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        module.distill_step(step)
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--embed-subset", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--class-chunk", type=int, default=None, help="distill.class_chunk (default: auto)")
    parser.add_argument("--matmul-precision", default="highest", choices=("highest", "high"))
    parser.add_argument("--data-dir", default=os.environ.get("DREAM_DATA_DIR"), help="dataset folder")
    args = parser.parse_args()
    torch.set_float32_matmul_precision(args.matmul_precision)
    data = load_dataset("fashion_mnist", args.data_dir)
    real = RealSet.from_data(data, device=args.device)
    random_step = time_steps(module_for("random", args, real, data.spec), args.steps, args.device)
    dream = module_for("dream", args, real, data.spec)
    sync(args.device)
    start = time.perf_counter()
    dream.refresh_selection(0)
    sync(args.device)
    cluster = time.perf_counter() - start
    dream_step = time_steps(dream, args.steps, args.device)
    overhead = (dream_step + cluster / args.interval) / random_step - 1
    threads = torch.get_num_threads()
    chunk = dream.class_chunk()
    print(
        f"\nFashionMNIST IPC 10, f 2, ConvNet-3 w{args.width}, {args.device}, {threads} threads, "
        f"{chunk} class{'es' * (chunk != 1)} per matching pass, matmul precision {args.matmul_precision}"
    )
    print("| quantity | seconds |")
    print("|---|---|")
    print(f"| inner step, random sampler | {random_step:.2f} |")
    print(f"| inner step, DREAM sampler (between events) | {dream_step:.2f} |")
    print(f"| one clustering event (10 classes, embed + K-means) | {cluster:.1f} |")
    print(f"| DREAM overhead at I_int={args.interval} | {100 * overhead:+.0f}% |")
    print(f"| of which clustering events | {100 * cluster / args.interval / random_step:+.0f}% |")


if __name__ == "__main__":
    main()
