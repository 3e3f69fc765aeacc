"""Experiment tracking with the real W&B library in offline mode, and TensorBoard."""

import time

import pytest
import wandb

from dream_pl.runner import close_wandb, wandb_offline


@pytest.fixture
def no_wandb_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_wandb_goes_offline_without_credentials(no_wandb_credentials, monkeypatch):
    assert wandb_offline()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline()


def test_offline_wandb_run_holds_config_commit_and_logged_keys(no_wandb_credentials, tmp_path, tiny_cfg):
    from dream_pl.workflow import distill

    try:
        distill(tiny_cfg(tmp_path, "logger=wandb", "trainer.log_every_n_steps=1", "diagnostics_every=3"))
    finally:
        close_wandb()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # offline runs keep everything in the run's protobuf log until `wandb sync`: look for the records.
    # W&B's service process writes that log on its own schedule (once seen: only the header right after
    # finish()), so wait for it, with a generous limit that only a writer that never flushes would hit.
    keys = ("git_commit", "n_clusters", "match_dsa", "distill/loss", "distill/time/cluster_s")
    keys += ("distill/diag/mmd_selected", "distill/loss_class/0", "eval/*")  # diagnostics, summary rule
    deadline = time.monotonic() + 120
    while True:
        log = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
        missing = [key for key in keys if key.encode() not in log]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, missing
    assert list((runs[0] / "files" / "media" / "images" / "distill").glob("synthetic_*.png"))
    assert wandb.run is None  # closed: the next job of a multirun starts clean


def test_tensorboard_logger_writes_events_and_the_grid(tmp_path, tiny_cfg):
    from dream_pl.workflow import distill

    distill(tiny_cfg(tmp_path, "logger=tensorboard", "iterations=1"))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
