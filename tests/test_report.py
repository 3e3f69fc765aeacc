"""A tiny real multirun over two N values on mnist_5k, then its report."""

import os
import subprocess
import sys

from dream_pl.report import markdown, report, summarize


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
