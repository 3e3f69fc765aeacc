"""The efficiency benchmark's report, on hand-made job folders with known curves."""

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


def write_job(root: Path, sampler: str, seed: int, final: float, curve: list[float]) -> None:
    job = root / sampler / f"seed{seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / "csv").mkdir()
    overrides = ["experiment=efficiency_cpu", f"sampler={sampler}", "ipc=1", f"seed={seed}", "iterations=4"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "eval.json").write_text(json.dumps([{"set": "distilled", "model": "convnet", "mean": final}]))
    rows = ["iteration,eval/convnet/acc"] + [f"{2.0 * i},{acc}" for i, acc in enumerate(curve)]
    (job / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_report_finds_the_first_iteration_dream_matches_random(tmp_path):
    bench = load_script()
    runs = tmp_path / "runs"
    # random ends its curve at mean (60 + 62) / 2 = 61; DREAM's mean is 61.5 at iteration 2, 62.5 at 4
    write_job(runs, "random", 0, 70.0, [50.0, 55.0, 60.0])
    write_job(runs, "random", 1, 72.0, [50.0, 57.0, 62.0])
    write_job(runs, "dream", 0, 73.0, [50.0, 61.0, 62.0])
    write_job(runs, "dream", 1, 75.0, [50.0, 62.0, 63.0])
    text = bench.summarise(bench.collect(runs), tmp_path, "efficiency_cpu")
    # finals: mean ± population std over seeds; reach: the first DREAM mean >= 61.0 is at iteration 2 of 4
    assert "| 1 | 71.0 ± 1.0 | 74.0 ± 1.0 | 61.0 | 2 | 4 |" in text
    assert "overrides `iterations=4`" in text  # a setting every run shared is named; sampler/seed are not
    assert "| 1 | dream | 0: 50.0 ± 0.0, 2: 61.5 ± 0.5, 4: 62.5 ± 0.5 |" in text
    assert (tmp_path / "efficiency.png").stat().st_size > 0
    assert (tmp_path / "efficiency.md").read_text() == text


def test_report_says_when_dream_never_matches(tmp_path):
    bench = load_script()
    runs = tmp_path / "runs"
    write_job(runs, "random", 0, 70.0, [50.0, 60.0])
    write_job(runs, "dream", 0, 69.0, [50.0, 55.0])
    text = bench.summarise(bench.collect(runs), tmp_path, "efficiency_cpu")
    assert "| 1 | 70.0 ± 0.0 | 69.0 ± 0.0 | 60.0 | not reached | 2 |" in text
