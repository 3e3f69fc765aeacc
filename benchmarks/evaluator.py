"""Evaluator speed: R repeats trained stacked (vmap) vs one after another.

Times the evaluation protocol on a synthetic-set-sized training set (IPC 10, factor 2: 400 images of
MNIST-5k, 28 px) with ConvNet-3 width 128 for a few epochs, three ways:
  stacked     - one StackedClassifier, R networks under torch.func.vmap (the default);
  looped      - one StackedClassifier with stacked=False (R networks in a Python loop, one Trainer);
  sequential  - R separate evaluate_set calls with repeats=1 (what the reference code does).
Each is timed under every evaluation.compile setting asked for (--compile off,on): off is one step per
batch; auto/on on a GPU captures each epoch's batch steps in CUDA graphs (on a CPU, on runs them eagerly).
Run: python benchmarks/evaluator.py [--epochs 10] [--repeats 5] [--width 128] [--device cpu]
     [--dataset fashion_mnist --data-dir DIR] [--modes stacked] [--compile off,on]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from dataclasses import replace

import torch
from hydra import compose, initialize_config_dir

from dream_pl.config import CONF_DIR, protocol_from
from dream_pl.data import load_dataset
from dream_pl.evaluation.protocol import evaluate_set
from dream_pl.evaluation.sets import baseline_set
from dream_pl.models import network_factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--images-per-class", type=int, default=40)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dataset", default="mnist_5k", help="mnist_5k (embedded) or fashion_mnist")
    parser.add_argument("--data-dir", default=os.environ.get("DREAM_DATA_DIR"), help="dataset folder")
    parser.add_argument("--modes", default="stacked,looped,sequential", help="which of the three to time")
    parser.add_argument("--compile", default="auto", help="evaluation.compile settings to time: auto,on,off")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    data = load_dataset(args.dataset, args.data_dir)
    images, labels = baseline_set("random", data, args.images_per_class, seed=0)
    spec = data.spec
    shape = {"channels": spec.channels, "num_classes": spec.num_classes, "size": spec.size}
    factory = network_factory("convnet", **shape, width=args.width)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        ev = compose("eval", overrides=["synthetic=random", f"dataset={args.dataset}"]).evaluation
    paper = protocol_from(ev)  # the dataset's recipe
    modes = args.modes.split(",")

    def timed(repeats: int, stacked: bool, compile_mode: str, seed: int = 0) -> tuple[float, list, str]:
        protocol = replace(paper, epochs=args.epochs, repeats=repeats, stacked=stacked, compile=compile_mode)
        start = time.perf_counter()
        result = evaluate_set(
            factory,
            images,
            labels,
            (data.test_images, data.test_labels),
            model="convnet",
            mean=spec.mean,
            std=spec.std,
            num_classes=spec.num_classes,
            protocol=protocol,
            seed=seed,
            accelerator="gpu" if args.device == "cuda" else "cpu",
        )
        return time.perf_counter() - start, result.accuracies, result.extra["compile"]

    rows = []  # (mode, compile as run, seconds, accuracies, seconds of the sequential row of that setting)
    for compile_mode in args.compile.split(","):
        timed(1, True, compile_mode)  # warm-up: imports, allocator, kernels
        timings = []
        if "stacked" in modes:
            timings.append(("stacked (vmap)", *timed(args.repeats, True, compile_mode)))
        if "looped" in modes:
            timings.append(("looped (one Trainer)", *timed(args.repeats, False, compile_mode)))
        total, accs = 0.0, []
        if "sequential" in modes:
            for r in range(args.repeats):
                t, acc, ran = timed(1, True, compile_mode, seed=r)
                total += t
                accs += acc
            timings.append(("sequential (R runs)", total, accs, ran))
        rows += [(name, ran, t, acc, total) for name, t, acc, ran in timings]
    device = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    )
    print(
        f"\n{args.repeats} repeats, {len(labels)} images, ConvNet-3 width {args.width}, "
        f"{args.epochs} epochs, {device}"
    )
    print("| mode | compile | seconds | s / epoch | speed-up vs sequential | mean acc (%) |")
    print("|---|---|---|---|---|---|")
    for name, ran, t, acc, total in rows:
        speedup = f"{total / t:.2f}x" if total else "-"
        mean = 100 * sum(acc) / len(acc)
        print(f"| {name} | {ran} | {t:.1f} | {t / args.epochs:.2f} | {speedup} | {mean:.1f} |")


if __name__ == "__main__":
    main()
