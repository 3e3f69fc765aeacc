"""The equal-iteration study's report (benchmarks/efficiency.py) on hand-made jobs with known curves."""

import importlib.util
import json
from pathlib import Path

import yaml

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "efficiency.py"


def load_script():
    spec = importlib.util.spec_from_file_location("efficiency_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_job(root: Path, cell: str, seed: int, final: float, curve: list[float]) -> None:
    job = root / cell / f"seed{seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / "csv").mkdir()
    bench = load_script()
    overrides = ["experiment=efficiency_cpu", *bench.cell_overrides(cell, 1000), "ipc=1", f"seed={seed}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, "iterations=4"]))
    (job / "eval.json").write_text(json.dumps([{"set": "distilled", "model": "convnet", "mean": final}]))
    rows = ["iteration,eval/convnet/acc"] + [f"{2.0 * i},{acc}" for i, acc in enumerate(curve)]
    (job / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_cells_differ_only_in_sampler_and_init():
    bench = load_script()
    assert bench.cell_overrides("idc", 1000) == ["sampler=random", "init=random"]
    assert bench.cell_overrides("init", 1000) == ["sampler=random", "init=kmeans"]
    assert bench.cell_overrides("dream", 0) == [
        "sampler=dream",
        "sampler.n_clusters=${distill.batch_real}",
        "init=kmeans",
    ]
    assert "sampler.embed_subset=1000" in bench.cell_overrides("rm", 1000)


def test_report_finds_when_each_cell_reaches_the_baseline(tmp_path):
    bench = load_script()
    runs = tmp_path / "runs"
    # the baseline (idc) ends its curve at mean (60 + 62) / 2 = 61
    write_job(runs, "idc", 0, 70.0, [50.0, 55.0, 60.0])
    write_job(runs, "idc", 1, 72.0, [50.0, 57.0, 62.0])
    # dream: mean 61.5 at iteration 2; seed 0 reaches 61 at 4, seed 1 at 2
    write_job(runs, "dream", 0, 73.0, [50.0, 60.0, 62.0])
    write_job(runs, "dream", 1, 75.0, [50.0, 63.0, 63.0])
    write_job(runs, "rm", 0, 69.0, [50.0, 55.0, 58.0])  # never reaches it
    text = bench.summarise(bench.collect(runs), tmp_path, "efficiency_cpu")
    assert "| 1 | idc | - | - | 2 | 71.0 ± 1.0 | 61.0 ± 1.0 | baseline | 4 |" in text
    assert "| 1 | dream | ✓ | ✓ | 2 | 74.0 ± 1.0 | 62.5 ± 0.5 | 2; 4, 2 | 4 |" in text
    assert "| 1 | rm | ✓ | - | 1 | 69.0 ± 0.0 | 58.0 ± 0.0 | not reached; not reached | 4 |" in text
    assert "overrides `iterations=4`" in text  # a setting every run shared is named; the cell's are not
    assert "| 1 | dream | 0: 50.0 ± 0.0, 2: 61.5 ± 1.5, 4: 62.5 ± 0.5 |" in text
    assert (tmp_path / "efficiency.png").stat().st_size > 0
    assert (tmp_path / "efficiency.md").read_text() == text
