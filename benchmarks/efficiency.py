"""DREAM's components at equal iterations on real FashionMNIST (the paper's Table 3 grid).

Runs one Hydra multirun per cell of the grid, over IPC and the distillation seeds, everything else equal:

  idc    random batches,          random real init   (the baseline: IDC)
  rm     representative matching, random real init
  init   random batches,          K-means init
  dream  representative matching, K-means init       (DREAM)

and reports per IPC: each cell's final accuracy (the preset's full evaluation at the end, mean ± std over
seeds), its periodic accuracy curve, and the first outer iteration at which it reaches the baseline's final
periodic accuracy: from the seed-mean curve, and per seed (the band). Writes efficiency.md and
efficiency.png into --out.
Run: python benchmarks/efficiency.py [--preset efficiency_cpu] [--ipcs 1] [--seeds 0,1,2] [--cells ...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt

from dream_pl.report import read_job, read_metrics, summarize

BASELINE = "idc"
# (representative matching, clustering init) of each cell, as in the paper's Table 3
COMPONENTS = {"idc": (False, False), "rm": (True, False), "init": (False, True), "dream": (True, True)}
NOT_SETTINGS = {"experiment", "ipc", "seed", "trainer.enable_progress_bar", "sampler", "init"}


def cell_overrides(cell: str, embed_subset: int) -> list[str]:
    """The overrides that make a cell: sampler and init (N = batch_real, as in DREAM's code)."""
    rm, init = COMPONENTS[cell]
    sampler = ["sampler=random"]
    if rm:
        sampler = ["sampler=dream", "sampler.n_clusters=${distill.batch_real}"]
        sampler += [f"sampler.embed_subset={embed_subset}"] if embed_subset else []
    return [*sampler, f"init={'kmeans' if init else 'random'}"]


def run_sweeps(args: argparse.Namespace, root: Path) -> None:
    for cell in args.cells.split(","):
        cmd = [sys.executable, "-m", "dream_pl.train", "-m", f"experiment={args.preset}",
               *cell_overrides(cell, args.embed_subset), f"ipc={args.ipcs}", f"seed={args.seeds}",
               "trainer.enable_progress_bar=false", f"hydra.sweep.dir={root / cell}",
               *args.overrides]  # fmt: skip
        subprocess.run(cmd, check=True)


def collect(root: Path) -> dict[tuple[str, str], list[dict]]:
    """Finished jobs by (cell, IPC)."""
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for cell in COMPONENTS:
        if not (root / cell).is_dir():
            continue
        for job in sorted((root / cell).iterdir()):
            if job.is_dir() and (j := read_job(job)):
                runs[cell, j["overrides"].get("ipc", "?")].append(j)
    return runs


def mean_curve(jobs: list[dict]) -> list[tuple[float, float, float]]:
    """(outer iteration, mean, std over seeds) of the periodic accuracy."""
    points = defaultdict(list)
    for j in jobs:
        for it, acc in j["curve"]:
            points[it].append(acc)
    return [(it, statistics.fmean(points[it]), statistics.pstdev(points[it])) for it in sorted(points)]


SELECTION_KEYS = {  # logged quantity -> report column
    "distill/diag/graddist_ratio": "gradient distance to the class, selected / random batch",
    "distill/cluster/centroid_dist_ratio": "feature distance to the class centroid, selected / class mean",
}


def selection_series(job_dir: Path, key: str) -> dict[int, float]:
    """step -> value of a logged selection statistic (diagnostics / clustering events) of one job."""
    return {int(r["step"]): float(r[key]) for r in read_metrics(job_dir) if r.get(key)}


def selection_rows(runs: dict[tuple[str, str], list[dict]], root: Path) -> list[str]:
    """Per cell and statistic: the seed-mean value at each logged step, and its mean over the run.

    A value logged at a clustering or diagnostics event appears at the logger's next flush (with
    ``log_every_n_steps=10``, step 9 holds the event of step 0).
    """
    rows = ["| IPC | cell | statistic | mean over the run | by step (seed mean) |", "|---|---|---|---|---|"]
    for (cell, ipc), jobs in sorted(runs.items()):
        for key, label in SELECTION_KEYS.items():
            by_step = defaultdict(list)
            for j in jobs:
                for step, value in selection_series(root / cell / j["job"], key).items():
                    by_step[step].append(value)
            if by_step:
                means = {s: statistics.fmean(v) for s, v in sorted(by_step.items())}
                points = ", ".join(f"{s}: {m:.2f}" for s, m in means.items())
                rows.append(
                    f"| {ipc} | {cell} | {label} | {statistics.fmean(means.values()):.2f} | {points} |"
                )
    return rows if len(rows) > 2 else []


def reaches(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first outer iteration whose accuracy is >= target (None: never)."""
    return next((it for it, acc in curve if acc >= target), None)


def _it(value: float | None) -> str:
    return "not reached" if value is None else f"{value:g}"


def summarise(
    runs: dict[tuple[str, str], list[dict]], out: Path, preset: str, root: Path | None = None
) -> str:
    """The report: finals, iterations to the baseline's accuracy, curves; and the figure."""
    cells = [c for c in COMPONENTS if any(cell == c for cell, _ in runs)]
    # only IPCs that every cell finished (a sweep may have been cut short)
    ipcs = sorted({ipc for _, ipc in runs if all(runs.get((c, ipc)) for c in cells)}, key=int)
    shared = set.intersection(*(set(j["overrides"].items()) for jobs in runs.values() for j in jobs))
    extra = " ".join(f"{k}={v}" for k, v in sorted(shared) if k not in NOT_SETTINGS)
    lines = [
        f"preset `{preset}`{f', overrides `{extra}`' if extra else ''}; final = the preset's full evaluation "
        "at the end, curve = periodic evaluation; mean ± std over the distillation seeds",
        "",
        "| IPC | cell | RM | Init | seeds | final (%) | curve end (%) | reaches the baseline's curve end at "
        "(seed mean; per seed) | of |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    curve_rows = [
        "| IPC | cell | periodic accuracy by outer iteration, mean ± std over seeds (%) |",
        "|---|---|---|",
    ]
    fig, axes = plt.subplots(1, len(ipcs), figsize=(6 * len(ipcs), 4), squeeze=False)
    for ax, ipc in zip(axes[0], ipcs, strict=True):
        curves = {c: mean_curve(runs[c, ipc]) for c in cells}
        target = curves[BASELINE][-1][1] if BASELINE in curves else None
        for cell in cells:
            jobs = runs[cell, ipc]
            _, (final,) = summarize(jobs)  # the jobs of a cell differ by seed only: one row
            its, means, stds = zip(*curves[cell], strict=True)
            ax.plot(its, means, marker="o", label=f"{cell} ({final['seeds']} seeds, ± std shaded)")
            low = [m - s for m, s in zip(means, stds, strict=True)]
            ax.fill_between(its, low, [m + s for m, s in zip(means, stds, strict=True)], alpha=0.15)
            if target is None or cell == BASELINE:
                reach = "baseline" if cell == BASELINE else "-"
            else:
                seeds = ", ".join(_it(reaches(j["curve"], target)) for j in jobs)
                reach = f"{_it(reaches([(it, m) for it, m, _ in curves[cell]], target))}; {seeds}"
            rm, init = COMPONENTS[cell]
            lines.append(
                f"| {ipc} | {cell} | {'✓' if rm else '-'} | {'✓' if init else '-'} | {final['seeds']} "
                f"| {final['mean']:.1f} ± {final['std']:.1f} | {means[-1]:.1f} ± {stds[-1]:.1f} | {reach} "
                f"| {its[-1]:g} |"
            )
            points = ", ".join(f"{it:g}: {m:.1f} ± {sd:.1f}" for it, m, sd in curves[cell])
            curve_rows.append(f"| {ipc} | {cell} | {points} |")
        if target is not None:
            ax.axhline(target, ls=":", c="gray", label=f"{BASELINE} curve end")
        ax.set(title=f"FashionMNIST IPC {ipc}", xlabel="outer iteration", ylabel="top-1 (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "efficiency.png", dpi=120)
    plt.close(fig)
    selection = selection_rows(runs, root) if root is not None else []
    text = "\n".join([*lines, "", *curve_rows, *(["", *selection] if selection else [])])
    text += "\n\n![accuracy vs iteration](efficiency.png)\n"
    (out / "efficiency.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="efficiency_cpu")
    parser.add_argument("--ipcs", default="1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cells", default=",".join(COMPONENTS), help=f"which of {', '.join(COMPONENTS)}")
    parser.add_argument("--embed-subset", type=int, default=1000, help="images per class each event embeds")
    parser.add_argument("--out", default="docs/components")
    parser.add_argument("--report-only", action="store_true", help="summarise existing sweeps under --out")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run_sweeps(args, out / "runs")
    runs = collect(out / "runs")
    if not runs:
        raise SystemExit(f"error: no finished jobs under {out / 'runs'}")
    print(summarise(runs, out, args.preset, out / "runs"))


if __name__ == "__main__":
    main()
