"""Sweep report: ``python -m dream_pl.report <multirun dir>`` -> report.md, a heat map and curves.

Reads every job of a Hydra multirun (its ``.hydra/overrides.yaml``, ``eval.json`` and, when periodic
evaluation was on, the ``csv/metrics*.csv`` of every attempt), groups jobs by their swept values except the
seed, and reports the distilled set's final accuracy as mean ± std over seeds.

``python -m dream_pl.report --table <folder>`` -> runs.md: every run under the folder (any depth, any
entry point) side by side, one line per (run, architecture): method, dataset, IPC, accuracy, IOR, HLR and
wall-clock, the columns runs of different methods are compared on.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import yaml

from dream_pl.cli import report_user_errors
from dream_pl.evaluation.scores import NOT_MEASURED, is_number, is_reference, score_rows
from dream_pl.evaluation.sets import DISTILLED, INITIALISATION

SEED_KEYS = ("seed",)


def read_job(job: Path) -> dict[str, Any] | None:
    """Overrides, final accuracy per model and accuracy curve of one job (None if it has no eval.json)."""
    overrides_file, eval_file = job / ".hydra" / "overrides.yaml", job / "eval.json"
    if not (overrides_file.is_file() and eval_file.is_file()):
        return None
    overrides = dict(o.split("=", 1) for o in yaml.safe_load(overrides_file.read_text()) or [])
    rows = json.loads(eval_file.read_text())
    acc = {r["model"]: r["mean"] for r in rows if r["set"] == DISTILLED}
    return {
        "job": job.name,
        "overrides": overrides,
        "acc": acc,
        "curve": read_curve(read_metrics(job)),
    }


def read_metrics(job: Path) -> list[dict[str, str]]:
    """Every row a run logged to CSV, all attempts in order.

    ``metrics.1.csv``, ``metrics.2.csv``, ... are the earlier attempts of a resumed run (kept by
    ``runner.keep_metrics_history``); ``metrics.csv`` is the latest.
    """
    folder = job / "csv"
    earlier = sorted(folder.glob("metrics.*.csv"), key=lambda p: int(p.suffixes[0][1:]))
    rows: list[dict[str, str]] = []
    for path in [*earlier, folder / "metrics.csv"]:
        if path.is_file():
            with path.open() as f:
                rows += list(csv.DictReader(f))
    return rows


def read_curve(rows: list[dict[str, str]]) -> list[tuple[float, float]]:
    """(outer iteration, accuracy) pairs of periodic evaluation, if any; a later attempt's point wins."""
    key = next((k for r in rows for k in r if k.startswith("eval/") and k.endswith("/acc")), None)
    points = {float(r["iteration"]): float(r[key]) for r in rows if key and r.get(key) and r.get("iteration")}
    return sorted(points.items())


def summarize(jobs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Swept keys (seed excluded) and one row per setting: mean ± std of the first model's accuracy."""
    keys = sorted({k for j in jobs for k in j["overrides"]} - set(SEED_KEYS))
    swept = [k for k in keys if len({j["overrides"].get(k) for j in jobs}) > 1]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for j in jobs:
        groups[tuple(j["overrides"].get(k, "") for k in swept)].append(j)
    rows = []
    for setting, members in sorted(groups.items(), key=lambda kv: [_sortable(v) for v in kv[0]]):
        accs = [next(iter(m["acc"].values())) for m in members if m["acc"]]
        rows.append(
            {
                **dict(zip(swept, setting, strict=True)),
                "seeds": len(accs),
                "mean": statistics.fmean(accs) if accs else float("nan"),
                "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                "curves": [m["curve"] for m in members if m["curve"]],
            }
        )
    return swept, rows


def _sortable(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def markdown(swept: list[str], rows: list[dict[str, Any]]) -> str:
    """The summary as a markdown table."""
    head = [*swept, "seeds", "top-1 (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[k]) for k in swept] + [str(r["seeds"]), f"{r['mean']:.1f} ± {r['std']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heatmap(swept: list[str], rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Mean accuracy over a two-key grid (e.g. N x n, Table 5); None unless exactly two keys were swept."""
    if len(swept) != 2:
        return None
    xs = sorted({r[swept[0]] for r in rows}, key=_sortable)
    ys = sorted({r[swept[1]] for r in rows}, key=_sortable)
    grid = [[float("nan")] * len(xs) for _ in ys]
    for r in rows:
        grid[ys.index(r[swept[1]])][xs.index(r[swept[0]])] = r["mean"]
    fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 2, 1.0 * len(ys) + 1.5))
    im = ax.imshow(grid, cmap="viridis", origin="lower")
    ax.set(
        xticks=range(len(xs)),
        xticklabels=xs,
        yticks=range(len(ys)),
        yticklabels=ys,
        xlabel=swept[0],
        ylabel=swept[1],
    )
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w")
    fig.colorbar(im, ax=ax, label="top-1 (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curves(swept: list[str], rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy vs outer iteration, one line per setting (mean over seeds); None without periodic eval."""
    if not any(r["curves"] for r in rows):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if not r["curves"]:
            continue
        points = defaultdict(list)
        for curve in r["curves"]:
            for it, acc in curve:
                points[it].append(acc)
        its = sorted(points)
        label = ", ".join(f"{k}={r[k]}" for k in swept) or "run"
        ax.plot(its, [statistics.fmean(points[i]) for i in its], marker="o", label=label)
    ax.set(xlabel="outer iteration", ylabel="top-1 (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(multirun_dir: str | Path) -> str:
    """Write report.md (+ heatmap.png / curves.png where they apply) into the multirun directory."""
    root = Path(multirun_dir)
    jobs = [j for d in sorted(root.iterdir()) if d.is_dir() and (j := read_job(d))]
    if not jobs:
        raise FileNotFoundError(f"no finished jobs (with .hydra/overrides.yaml and eval.json) under {root}")
    swept, rows = summarize(jobs)
    text = f"# Sweep report: {root}\n\n{len(jobs)} jobs, mean ± std over seeds\n\n{markdown(swept, rows)}\n"
    for name, fn in (("heatmap.png", heatmap), ("curves.png", curves)):
        if fn(swept, rows, root / name):
            text += f"\n![{name}]({name})\n"
    (root / "report.md").write_text(text)
    return text


TABLE_COLUMNS = ("run", "method", "dataset", "model", "IPC", "top-1 (%)", "IOR", "HLR", "wall-clock (s)")


def run_config(folder: Path) -> dict[str, Any]:
    """The run's composed config (Hydra's ``.hydra/config.yaml``), or {} where the folder has none."""
    path = folder / ".hydra" / "config.yaml"
    config = yaml.safe_load(path.read_text()) if path.is_file() else None
    return config if isinstance(config, dict) else {}


def run_method(config: dict[str, Any], row: dict[str, Any]) -> str:
    """What made the row's set: the run's ``distill.method``, the format of a foreign set, or the baseline."""
    if row["set"] != DISTILLED:
        return row["set"]  # a baseline evaluated on its own (dream_pl.evaluate synthetic=herding)
    method = (config.get("distill") or {}).get("method")
    if method:
        return str(method)
    fmt = config.get("format")
    return str(fmt) if fmt and fmt != "dream_pl" else "unknown"


def wall_clock(row: dict[str, Any]) -> str:
    """Distillation + evaluation seconds as eval.json records them (older runs recorded neither)."""
    distill, evaluation = row.get("distill_seconds"), row.get("eval_seconds")
    if is_number(distill) and is_number(evaluation):
        return f"{distill + evaluation:.0f} ({distill:.0f} + {evaluation:.0f})"
    if is_number(evaluation):
        return f"{evaluation:.0f} (evaluation only)"
    return "not recorded"


def _points(value: object) -> str:
    return f"{value:+.1f}" if is_number(value) else str(value or NOT_MEASURED)


def run_rows(folder: Path, root: Path) -> list[dict[str, str]]:
    """The table's lines of one run folder: its distilled set per architecture (else the sets it scored).

    Scores are recomputed from the rows of its eval.json (random real images, the whole-set reference), so
    runs written before the scores existed compare the same way.
    """
    rows = json.loads((folder / "eval.json").read_text())
    rows = [r for r in rows if isinstance(r, dict) and {"set", "model", "mean"} <= r.keys()]
    scored = score_rows(rows)
    others = [r for r in scored if not is_reference(r["set"]) and r["set"] != INITIALISATION]
    config = run_config(folder)
    lines = []
    for r in [r for r in scored if r["set"] == DISTILLED] or others:
        ipc = r.get("ipc", config.get("ipc") if "distill" in config else None)
        cells = [
            str(folder.relative_to(root)),
            run_method(config, r),
            str(r.get("dataset") or (config.get("dataset") or {}).get("name") or "unknown"),
            r["model"],
            "not recorded" if ipc is None else str(ipc),
            f"{r['mean']:.1f} ± {r.get('std', 0.0):.1f}",
            _points(r["ior"]),
            _points(r["hlr"]),
            wall_clock(r),
        ]
        lines.append(dict(zip(TABLE_COLUMNS, cells, strict=True)))
    return lines


def runs_markdown(lines: list[dict[str, str]]) -> str:
    """The cross-run table, sorted by dataset, IPC, method, architecture and run."""
    order = sorted(
        lines, key=lambda r: (r["dataset"], _sortable(r["IPC"]), r["method"], r["model"], r["run"])
    )
    text = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    text += ["| " + " | ".join(r[c] for c in TABLE_COLUMNS) + " |" for r in order]
    return "\n".join(text)


def table(folder: str | Path) -> str:
    """Write runs.md into ``folder``: every run under it (folders with an eval.json) side by side."""
    root = Path(folder)
    runs = sorted({path.parent for path in root.rglob("eval.json")})
    if not runs:
        raise FileNotFoundError(f"no runs (folders with an eval.json) under {root}")
    lines = [line for run in runs for line in run_rows(run, root)]
    text = (
        f"# Runs: {root}\n\n{len(runs)} runs. IOR = top-1 - random real images of the same IPC, HLR = whole "
        "set - top-1, in points under each run's protocol (docs/evaluation.md); wall-clock = distillation + "
        f"evaluation seconds.\n\n{runs_markdown(lines)}\n"
    )
    (root / "runs.md").write_text(text)
    return text


def main() -> None:
    """Console entry: a user error is one line and exit status 2, as in every entry point."""
    parser = argparse.ArgumentParser(description="Summarise a dream_pl multirun directory, or tabulate runs.")
    parser.add_argument("folder", help="a multirun directory (sweep report), or any folder of runs (--table)")
    parser.add_argument(
        "--table",
        action="store_true",
        help="one line per run under the folder: method, dataset, IPC, accuracy, IOR, HLR, wall-clock",
    )
    args = parser.parse_args()
    print(report_user_errors(lambda: table(args.folder) if args.table else report(args.folder)))


if __name__ == "__main__":
    main()
