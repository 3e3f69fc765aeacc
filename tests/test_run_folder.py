"""The run folder through the command line: one run at a time, every attempt kept, refusals change nothing.

A real run starts when the module's first test asks: ``history`` (finished, with periodic checkpoints
and CSV metrics: later calls act on copies of it). A second, ``holder``, is paused while it holds its folder
so that another run asks for the folder meanwhile. Each refusal is checked to leave the folder's files
byte for byte as they were. Every test starts real trainings: the slow tier.
"""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from clitools import Commands, assert_one_line_error

from dream_pl.runlock import LOCK_NAME
from dream_pl.synthetic import load_synthetic

pytestmark = pytest.mark.slow

TRAIN, EVALUATE = "dream_pl.train", "dream_pl.evaluate"
BASE = ("debug=fdr", "ipc=1", "model.width=8", "sampler.n_clusters=16")  # 2 inner steps per outer iteration
HISTORY = (*BASE, "iterations=2", "distill.save_every=1", "logger=csv")  # checkpoints at steps 2 and 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Commands:
    cmds = Commands(tmp_path_factory.mktemp("folders"))
    cmds.start("history", TRAIN, *HISTORY, f"out_dir={cmds.root / 'history'}")
    yield cmds
    cmds.stop()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) -> its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def finished_copy(runs: Commands, name: str) -> Path:
    """A copy of the finished ``history`` run folder, to act on."""
    run = runs.result("history")
    assert run.returncode == 0, run.stderr[-3000:]
    copy = runs.root / name
    shutil.copytree(runs.root / "history", copy)
    return copy


def test_a_finished_run_folder_holds_config_log_checkpoints_and_readable_results(runs):
    out = finished_copy(runs, "inspect")
    assert (out / ".hydra" / "config.yaml").is_file()  # Hydra's run folder is out_dir
    assert (out / "train.log").is_file()
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step-2.ckpt", "step-4.ckpt"]  # keep_checkpoints=2 besides last.ckpt
    png_mode = (out / "synthetic.png").stat().st_mode & 0o777
    assert (out / "synthetic.pt").stat().st_mode & 0o777 == png_mode
    assert png_mode & 0o044  # group and others may read results, as they may the PNGs


def test_second_run_on_a_busy_folder_refuses_and_the_first_finishes_intact(runs):
    """The first run is stopped (SIGSTOP) once it says it is distilling, so it holds the folder for as long
    as the second takes to be refused, however fast either is; then it goes on and finishes."""
    shared = runs.root / "shared"
    holder = (*BASE, "iterations=2", "distill.save_every=1", "evaluation.enabled=false")
    first = runs.start_watched("holder", TRAIN, *holder, f"out_dir={shared}")
    try:
        assert first.wait_for("distilling on"), runs.result("holder").stderr[-3000:]
        first.pause()
        assert (shared / LOCK_NAME).is_file()
        runs.start("intruder", TRAIN, *BASE, "seed=1", f"out_dir={shared}")
        assert_one_line_error(runs.result("intruder"), str(shared), "in use by another run")
    finally:
        first.resume()
    done = runs.result("holder")
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.name for p in (shared / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step-2.ckpt", "step-4.ckpt"]  # no last-v1.ckpt beside them
    assert load_synthetic(shared).config["seed"] == 0  # the first run's set, not the intruder's
    assert not (shared / LOCK_NAME).exists()


def test_resume_with_another_shape_refuses_and_changes_nothing(runs):
    out = finished_copy(runs, "other_ipc")
    before = snapshot(out)
    run = runs.run("other_ipc", TRAIN, *HISTORY, "ipc=2", f"out_dir={out}")
    assert_one_line_error(run, "cannot resume", "ipc: checkpoint 1, now 2", "out_dir=<new folder>")
    assert snapshot(out) == before


def test_corrupt_checkpoint_refuses_with_the_ways_on_and_the_older_one_resumes(runs):
    out = finished_copy(runs, "corrupt")
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])
    before = snapshot(out)
    run = runs.run("corrupt", TRAIN, *HISTORY, f"out_dir={out}")
    older = out / "checkpoints" / "step-4.ckpt"
    assert_one_line_error(run, str(last), "cannot be read", f"resume={older}", "new out_dir")
    assert snapshot(out) == before
    back = runs.run("go_back", TRAIN, *HISTORY, "iterations=3", f"resume={older}", f"out_dir={out}")
    assert back.returncode == 0, back.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6


def test_rerun_keeps_every_attempts_config_and_metrics(runs):
    out = finished_copy(runs, "rerun")
    first_rows = (out / "csv" / "metrics.csv").read_text()
    first_config = (out / ".hydra" / "config.yaml").read_text()
    run = runs.run("rerun", TRAIN, *HISTORY, "iterations=3", f"out_dir={out}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "csv" / "metrics.1.csv").read_text() == first_rows  # the first attempt's rows, kept
    assert (out / ".hydra.1" / "config.yaml").read_text() == first_config
    assert "iterations: 3" in (out / ".hydra" / "config.yaml").read_text()
    steps = {int(float(r.split(",")[-1])) for r in (out / "csv" / "metrics.csv").read_text().splitlines()[1:]}
    assert max(steps) >= 5  # the second attempt continued from step 4


def test_evaluate_refuses_files_that_are_not_synthetic_sets(runs):
    out = finished_copy(runs, "not_sets")
    damaged = out / "damaged.pt"
    damaged.write_bytes((out / "synthetic.pt").read_bytes()[:4000])
    tensor = out / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    before = snapshot(out)
    cases = {
        "ckpt": (out / "checkpoints" / "last.ckpt", ["training checkpoint", "synthetic=<run folder>"]),
        "damaged": (damaged, ["damaged.pt", "cannot be read"]),
        "tensor": (tensor, ["tensor.pt", "not a synthetic set"]),
    }
    for name, (path, _) in cases.items():
        runs.start(f"eval_{name}", EVALUATE, f"synthetic={path}", f"out_dir={runs.root / 'eval_out'}")
    for name, (path, said) in cases.items():
        assert_one_line_error(runs.result(f"eval_{name}"), str(path), *said)
    assert snapshot(out) == before
    assert not (runs.root / "eval_out").exists()
