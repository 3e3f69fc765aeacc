"""DREAM vs random sampling on real FashionMNIST: accuracy vs iteration, and iterations to match.

Runs two Hydra multiruns of an efficiency preset (random sampler; DREAM sampler), over IPC and seeds,
then reports per IPC: both final accuracies (mean ± std over seeds), and the first outer iteration at
which DREAM's mean periodic accuracy reaches the random sampler's final periodic accuracy. Writes
efficiency.md and efficiency.png into --out.
Run: python benchmarks/efficiency.py [--preset efficiency_cpu] [--ipcs 1,10] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt

from dream_pl.report import read_job, summarize

# DREAM-only keys: N = batch_real (as in DREAM's code: 64 in efficiency_cpu, 128 at paper scale)
SAMPLERS = {"random": [], "dream": ["sampler.n_clusters=${distill.batch_real}", "sampler.embed_subset=1000"]}
NOT_SETTINGS = {"experiment", "ipc", "trainer.enable_progress_bar"}  # shared overrides the report omits


def run_sweeps(args: argparse.Namespace, root: Path) -> None:
    for sampler in args.samplers.split(","):
        extra = SAMPLERS[sampler]
        cmd = [sys.executable, "-m", "dream_pl.train", "-m", f"experiment={args.preset}",
               f"sampler={sampler}", f"ipc={args.ipcs}", f"seed={args.seeds}",
               "trainer.enable_progress_bar=false", f"hydra.sweep.dir={root / sampler}", *extra,
               *args.overrides]  # fmt: skip
        subprocess.run(cmd, check=True)


def collect(root: Path) -> dict[tuple[str, str], list[dict]]:
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for sampler in SAMPLERS:
        for job in sorted((root / sampler).iterdir()):
            if job.is_dir() and (j := read_job(job)):
                runs[sampler, j["overrides"].get("ipc", "?")].append(j)
    return runs


def mean_curve(jobs: list[dict]) -> list[tuple[float, float, float]]:
    """(outer iteration, mean, std over seeds) of the periodic accuracy."""
    points = defaultdict(list)
    for j in jobs:
        for it, acc in j["curve"]:
            points[it].append(acc)
    return [(it, statistics.fmean(points[it]), statistics.pstdev(points[it])) for it in sorted(points)]


def summarise(runs: dict[tuple[str, str], list[dict]], out: Path, preset: str) -> str:
    # only IPCs that both samplers finished (a sweep may have been cut short)
    ipcs = sorted({ipc for _, ipc in runs if all(runs.get((s, ipc)) for s in SAMPLERS)}, key=int)
    shared = set.intersection(*(set(j["overrides"].items()) for jobs in runs.values() for j in jobs))
    extra = " ".join(f"{k}={v}" for k, v in sorted(shared) if k not in NOT_SETTINGS)
    lines = [
        f"preset `{preset}`{f', overrides `{extra}`' if extra else ''}; final = full evaluation at the end, "
        "curve = periodic evaluation",
        "",
        "| IPC | random final (%) | DREAM final (%) | random curve end (%) | DREAM reaches it at | of |",
        "|---|---|---|---|---|---|",
    ]
    curve_rows = [
        "| IPC | sampler | periodic accuracy by outer iteration, mean ± std over seeds (%) |",
        "|---|---|---|",
    ]
    fig, axes = plt.subplots(1, len(ipcs), figsize=(5 * len(ipcs), 3.6), squeeze=False)
    for ax, ipc in zip(axes[0], ipcs, strict=True):
        finals = {}
        curves = {}
        for sampler in SAMPLERS:
            jobs = runs[sampler, ipc]
            _, (finals[sampler],) = summarize(jobs)  # the jobs differ by seed only: one row
            curves[sampler] = mean_curve(jobs)
            its, means, stds = zip(*curves[sampler], strict=True)
            ax.plot(
                its, means, marker="o", label=f"{sampler} ({finals[sampler]['seeds']} seeds, ± std shaded)"
            )
            low = [m - s for m, s in zip(means, stds, strict=True)]
            high = [m + s for m, s in zip(means, stds, strict=True)]
            ax.fill_between(its, low, high, alpha=0.2)
            points = ", ".join(f"{it:g}: {m:.1f} ± {sd:.1f}" for it, m, sd in curves[sampler])
            curve_rows.append(f"| {ipc} | {sampler} | {points} |")
        target = curves["random"][-1][1]
        reach = next((it for it, acc, _ in curves["dream"] if acc >= target), None)
        last = curves["random"][-1][0]
        r, d = finals["random"], finals["dream"]
        lines.append(
            f"| {ipc} | {r['mean']:.1f} ± {r['std']:.1f} | {d['mean']:.1f} ± {d['std']:.1f} | {target:.1f} | "
            f"{'not reached' if reach is None else f'{reach:g}'} | {last:g} |"
        )
        ax.axhline(target, ls=":", c="gray")
        ax.set(title=f"FashionMNIST IPC {ipc}", xlabel="outer iteration", ylabel="top-1 (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "efficiency.png", dpi=120)
    text = "\n".join([*lines, "", *curve_rows]) + "\n\n![accuracy vs iteration](efficiency.png)\n"
    (out / "efficiency.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="efficiency_cpu")
    parser.add_argument("--ipcs", default="1,10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="docs/efficiency")
    parser.add_argument("--samplers", default="random,dream", help="which sweeps to run")
    parser.add_argument("--report-only", action="store_true", help="summarise existing sweeps under --out")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run_sweeps(args, out / "runs")
    print(summarise(collect(out / "runs"), out, args.preset))


if __name__ == "__main__":
    main()
