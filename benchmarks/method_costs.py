"""What each method and each DREAM+ option costs per inner step, split into its parts, in one process.

For every method of ``conf/method`` (random sampler, no clustering event among the timed steps) it times
--steps inner steps through the engine's own ``step`` and reports the matching pass and the network training
apart (the step's own ``time/match_s`` and ``time/net_s``); then DREAM+'s options one at a time on IDC's
step: the feature term (``matcher.feature_weight=1``: its cost is in the matching pass) and the warm-up of a
fresh network (``distill.warmup_epochs``, seconds per outer iteration), and a clustering event of DREAM's
sampler. IPC, width and dataset are options; FashionMNIST is read from disk.
Run: python benchmarks/method_costs.py [--ipc 10] [--width 32] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from dream_pl.config import CONF_DIR
from dream_pl.data import RealSet, load_dataset
from dream_pl.engine import Engine
from dream_pl.workflow import engine_parts

ROWS = {  # label: overrides (each on top of the method's recipe); the random sampler, so no step clusters
    "idc": ["method=idc", "sampler=random"],
    "idc + feature term (DREAM+)": ["method=idc", "matcher.feature_weight=1.0", "sampler=random"],
    "dc": ["method=dc", "sampler=random"],
    "dsa": ["method=dsa", "sampler=random"],
    "dm": ["method=dm", "sampler=random"],
}


def engine(overrides: list[str], args: argparse.Namespace, real: RealSet, spec) -> Engine:
    common = [f"dataset={args.dataset}", f"ipc={args.ipc}", f"model.width={args.width}", "init=random"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*common, *overrides])
    built = Engine(**engine_parts(cfg, real, spec))
    built.prepare()
    built.initialize()
    return built


def step_parts(e: Engine, steps: int) -> tuple[float, float, float]:
    """Mean (step, matching, network) seconds of inner steps 2 .. steps + 1 (step 1 untimed).

    A method with fewer inner steps per network (DC at IPC 1, DM) crosses outer iterations among them: a
    network drawn per step is part of its cost, as a last match that trains no network is.
    """
    logs = []
    for s in range(1, steps + 2):
        start = time.perf_counter()
        out = e.step(s)
        logs.append((time.perf_counter() - start, float(out["time/match_s"]), float(out["time/net_s"])))
    step, match, net = (statistics.fmean(v) for v in zip(*logs[1:], strict=True))
    return step, match, net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup-epochs", type=float, default=0.05, help="DREAM+'s warm-up timed at this")
    parser.add_argument("--embed-subset", type=int, default=500)
    args = parser.parse_args()
    data = load_dataset(args.dataset)
    real, spec = RealSet.from_data(data, "train"), data.spec
    threads = torch.get_num_threads()
    print(f"\n{args.dataset} IPC {args.ipc}, ConvNet-3 w{args.width}, {threads} threads, {args.steps} steps")
    print("| method | inner step (s) | matching (s) | network training (s) | network updates per step |")
    print("|---|---|---|---|---|")
    for label, overrides in ROWS.items():
        e = engine(overrides, args, real, spec)
        step, match, net = step_parts(e, args.steps)
        print(f"| {label} | {step:.2f} | {match:.2f} | {net:.2f} | {e.net_steps} |")
    idc = engine(["method=idc", f"distill.warmup_epochs={args.warmup_epochs}"], args, real, spec)
    idc.draw_network(0)
    warm = idc.warm_up(0)
    steps = round(args.warmup_epochs * len(real) / idc.cfg.batch_real)
    dream = engine(["sampler=dream", f"sampler.embed_subset={args.embed_subset}"], args, real, spec)
    dream.refresh_selection(0)
    start = time.perf_counter()
    dream.refresh_selection(1)
    event = time.perf_counter() - start
    print(f"\nDREAM+ warm-up, {args.warmup_epochs} real epochs ({steps} updates): {warm:.2f} s per network")
    print(f"DREAM clustering event (N 128, {args.embed_subset} images per class embedded): {event:.2f} s")


if __name__ == "__main__":
    main()
