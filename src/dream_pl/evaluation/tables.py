"""Evaluation results as people and loggers read them: the table, ``eval.json``, ``eval.csv``, logger keys."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from dream_pl.evaluation.scores import NOT_MEASURED, is_number
from dream_pl.evaluation.sets import WHOLE, is_random_baseline
from dream_pl.files import atomic_write

# eval.csv: DD-Ranking's hard-label columns (set, model, ipc, accuracy, IOR, HLR, LRS), then this project's
CSV_COLUMNS = (
    "set",
    "model",
    "ipc",
    "acc_mean",
    "acc_std",
    "ior",
    "hlr",
    "lrs",
    "ior_of_gap",
    "hlr_of_gap",
    "random_mean",
    "whole_mean",
    "images",
    "repeats",
    "epochs",
    "lr",
    "seconds",
    "protocol",
)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one line per (set, model), each set's gain over random real images, the protocol.

    Rows with scores (:func:`dream_pl.evaluation.scores.score_rows`) get a second table of IOR, HLR, their
    fractions of the whole-to-random gap and the LRS, and each architecture's whole-set reference is said,
    or said to be missing.
    """
    lines = ["| set | model | images | top-1 (%) | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['model']} | {r['images']} "
            f"| {r['mean']:.1f} ± {r['std']:.1f} | {r['seconds']:.0f} |"
        )
    baselines = {r["model"]: r for r in rows if is_random_baseline(r["set"])}
    for r in rows:
        base = baselines.get(r["model"])
        if base is not None and r is not base and r["set"] != WHOLE:
            gain = r["mean"] - base["mean"]
            lines.append(f"\n{r['set']} vs {base['set']} ({r['model']}): {gain:+.1f} points")
    lines += [f"\n{r['set']} ({r['model']}): {r['selected']}" for r in rows if "selected" in r]
    lines += score_lines(rows)
    if rows:
        lines.append(f"\nprotocol: {rows[0]['protocol']}")
    return "\n".join(lines)


def score_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The scores table and the whole-set references (nothing for rows that were never scored)."""
    scored = [r for r in rows if "ior" in r]
    if not scored:
        return []
    lines = [
        "\n| set | model | IOR (points) | HLR (points) | IOR / gap | HLR / gap | LRS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in scored:
        cells = [_cell(r["ior"], "{:+.1f}"), _cell(r["hlr"], "{:+.1f}")]
        cells += [_cell(r[key], "{:.3f}") for key in ("ior_of_gap", "hlr_of_gap", "lrs")]
        lines.append(f"| {r['set']} | {r['model']} | " + " | ".join(cells) + " |")
    whole = {r["model"]: r for r in rows if r["set"] == WHOLE}
    for model in dict.fromkeys(r["model"] for r in scored):
        ref = whole.get(model)
        if ref is None:
            lines.append(
                f"\n{WHOLE} ({model}): {NOT_MEASURED} (evaluation.whole=true trains it once and caches it "
                "in <data_dir>/references)"
            )
        else:
            how = "cached" if ref.get("extra", {}).get("cached") else "measured now"
            where = ref.get("extra", {}).get("reference", "")
            lines.append(
                f"\n{WHOLE} ({model}): {ref['mean']:.1f} ± {ref['std']:.1f}, {how} in {where}; "
                f"protocol: {ref['protocol']}"
            )
    return lines


def _cell(value: object, form: str) -> str:
    return form.format(value) if is_number(value) else str(value)


def eval_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Logger keys of the evaluated rows: ``eval/<model>/<set>/acc`` -> mean accuracy."""
    return {f"eval/{r['model']}/{r['set']}/acc": r["mean"] for r in rows}


def csv_row(row: dict[str, Any]) -> dict[str, str]:
    """One eval.json row as :data:`CSV_COLUMNS`; a value that is missing or not a number is an empty cell."""
    values = {
        **row,
        "acc_mean": row.get("mean"),
        "acc_std": row.get("std"),
        "repeats": row.get("repeats", len(row.get("accuracies", []))),
    }
    cells = {}
    for key in CSV_COLUMNS:
        value = values.get(key)
        if key in ("set", "model", "protocol"):
            cells[key] = "" if value is None else str(value)
        elif is_number(value):
            cells[key] = str(value if isinstance(value, int) else round(value, 6))
        else:
            cells[key] = ""  # not measured, undefined or not recorded: never a 0 that reads as a result
    return cells


def csv_text(rows: list[dict[str, Any]]) -> str:
    """eval.csv: a header of :data:`CSV_COLUMNS`, one line per (architecture, set)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_row(r) for r in rows)
    return buffer.getvalue()


def write_report(rows: list[dict[str, Any]], out: Path) -> Path:
    """``eval.json`` with every row and ``eval.csv`` beside it (each written whole), and the table printed."""
    path = out / "eval.json"
    atomic_write(path, lambda f: f.write(json.dumps(rows, indent=2).encode()))
    atomic_write(out / "eval.csv", lambda f: f.write(csv_text(rows).encode()))
    print(format_table(rows))
    return path
