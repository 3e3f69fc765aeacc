"""A sweep's report: grouping and tables on given jobs; a tiny real multirun over two N values (slow tier)."""

import json
import os
import subprocess
import sys

import pytest

from dream_pl.report import markdown, read_job, report, summarize


@pytest.mark.slow
def test_tiny_multirun_over_two_n_values_reports_both_rows(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "dream_pl.train", "-m",
        "sampler.n_clusters=8,16", "ipc=1", "iterations=1", "distill.inner_loops=2", "distill.n_data=32",
        "distill.batch_real=16", "sampler.embed_subset=100", "model.width=8", "evaluation.epochs=2",
        "evaluation.repeats=1", "evaluation.baseline=false", "eval_every=1", "evaluation.periodic.epochs=1",
        "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = report(sweep)
    assert "| sampler.n_clusters | seeds | top-1 (%) |" in text
    assert "\n| 8 | 1 | " in text
    assert "\n| 16 | 1 | " in text
    assert (sweep / "report.md").is_file()
    assert (sweep / "curves.png").is_file()


def test_summary_groups_seeds_and_draws_a_heatmap(tmp_path):
    jobs = [
        {
            "overrides": {"sampler.n_clusters": n, "sampler.n_per_cluster": k, "seed": s},
            "acc": {"convnet": acc},
            "curve": [],
        }
        for n, k, s, acc in [
            ("32", "1", "0", 60.0),
            ("32", "1", "1", 62.0),
            ("64", "1", "0", 70.0),
            ("32", "2", "0", 50.0),
        ]
    ]
    swept, rows = summarize(jobs)
    assert swept == ["sampler.n_clusters", "sampler.n_per_cluster"]
    assert rows[0] == {
        "sampler.n_clusters": "32",
        "sampler.n_per_cluster": "1",
        "seeds": 2,
        "mean": 61.0,
        "std": 1.0,
        "curves": [],
    }
    assert "| 32 | 1 | 2 | 61.0 ± 1.0 |" in markdown(swept, rows)
    from dream_pl.report import heatmap

    assert heatmap(swept, rows, tmp_path / "h.png").stat().st_size > 0


def fake_job(folder, overrides: list[str], acc: float | None, attempts: list[list[tuple[int, float]]] = ()):
    """A multirun job folder as a run leaves it: Hydra's overrides, eval.json, one CSV per attempt."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if acc is not None:
        rows = [
            {"model": "convnet", "set": "distilled", "mean": acc},
            {"model": "convnet", "set": "x", "mean": 1},
        ]
        (folder / "eval.json").write_text(json.dumps(rows))
    names = [f"metrics.{k}.csv" for k in range(1, len(attempts))] + ["metrics.csv"]
    for name, points in zip(names, attempts, strict=False):
        (folder / "csv").mkdir(exist_ok=True)
        lines = ["iteration,eval/convnet/acc,step"] + [f"{it},{a},{it * 2}" for it, a in points]
        (folder / "csv" / name).write_text("\n".join(lines) + "\n")


def test_report_of_a_multirun_folder_groups_seeds_and_reads_every_attempts_curve(tmp_path):
    fake_job(tmp_path / "0", ["sampler.n_clusters=8", "seed=0"], 50.0, [[(0, 10.0), (1, 20.0)], [(1, 30.0)]])
    fake_job(tmp_path / "1", ["sampler.n_clusters=8", "seed=1"], 54.0)
    fake_job(tmp_path / "2", ["sampler.n_clusters=16", "seed=0"], 60.0, [[(0, 12.0), (1, 40.0)]])
    fake_job(tmp_path / "3", ["sampler.n_clusters=32", "seed=0"], None)  # unfinished: no eval.json
    text = report(tmp_path)
    assert "3 jobs, mean ± std over seeds" in text
    assert "| sampler.n_clusters | seeds | top-1 (%) |" in text
    assert "\n| 8 | 2 | 52.0 ± 2.0 |" in text
    assert "\n| 16 | 1 | 60.0 ± 0.0 |" in text
    assert "| 32 |" not in text
    assert (tmp_path / "report.md").read_text() == text
    assert (tmp_path / "curves.png").stat().st_size > 0  # periodic evaluation was on
    assert not (tmp_path / "heatmap.png").exists()  # one swept key: no grid
    job = read_job(tmp_path / "0")
    assert job["curve"] == [(0.0, 10.0), (1.0, 30.0)]  # the resumed attempt's point wins
    assert job["acc"] == {"convnet": 50.0}


def test_report_of_a_folder_without_finished_jobs_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished jobs"):
        report(tmp_path)
