"""Evaluation results as people and loggers read them: the table, ``eval.json``, logger keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dream_pl.evaluation.sets import is_random_baseline


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one line per (set, model), each set's gain over random real images, the protocol."""
    lines = ["| set | model | images | top-1 (%) | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['model']} | {r['images']} "
            f"| {r['mean']:.1f} ± {r['std']:.1f} | {r['seconds']:.0f} |"
        )
    baselines = {r["model"]: r for r in rows if is_random_baseline(r["set"])}
    for r in rows:
        base = baselines.get(r["model"])
        if base is not None and r is not base:
            gain = r["mean"] - base["mean"]
            lines.append(f"\n{r['set']} vs {base['set']} ({r['model']}): {gain:+.1f} points")
    if rows:
        lines.append(f"\nprotocol: {rows[0]['protocol']}")
    return "\n".join(lines)


def eval_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Logger keys of the evaluated rows: ``eval/<model>/<set>/acc`` -> mean accuracy."""
    return {f"eval/{r['model']}/{r['set']}/acc": r["mean"] for r in rows}


def write_report(rows: list[dict[str, Any]], out: Path) -> Path:
    """``eval.json`` with every row, and the table printed."""
    path = out / "eval.json"
    path.write_text(json.dumps(rows, indent=2))
    print(format_table(rows))
    return path
