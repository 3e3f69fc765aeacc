"""The front door's hold on the run folder, and what the resume check reads, in-process and without timing.

A run started a moment after another on the same ``out_dir`` is played out deterministically: the first
run's lock appears between the second's pre-check and its start (the pre-check passed, the folder is then
taken), and the second must change nothing in the folder.
"""

import ctypes
import json
import mmap
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dream_pl import launch
from dream_pl.checkpoints import CONFIG_KEY, ENGINE_KEY, check_resume
from dream_pl.runlock import LOCK_NAME, RunLock, RunLockedError


@pytest.fixture
def front_door(monkeypatch):
    """``run(out, preflight, hydra_main)``: ``python -m dream_pl.train out_dir=<out>`` with stand-ins."""

    def run(out: Path, preflight: launch.Preflight, hydra_main) -> None:
        monkeypatch.setattr(sys, "argv", ["train.py", f"out_dir={out}"])
        launch.launch("train", preflight, hydra_main)

    monkeypatch.setattr(launch, "_EXISTING", set())
    return run


def earlier_attempt(out: Path) -> None:
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "config.yaml").write_text("the first run's config")


def test_a_run_whose_folder_was_taken_after_its_pre_check_changes_nothing(tmp_path, front_door, capsys):
    out = tmp_path / "run"
    earlier_attempt(out)
    first = {"host": socket.gethostname(), "pid": os.getppid(), "started": "t0"}  # a live process

    def first_run_starts_meanwhile(cfg, multirun):
        folder = launch.preflight_train(cfg, multirun)  # the folder was free when checked ...
        (out / LOCK_NAME).write_text(json.dumps(first))  # ... and the first run takes it now
        return folder

    def job():
        pytest.fail("the job ran in a folder another run holds")

    with pytest.raises(SystemExit) as stop:
        front_door(out, first_run_starts_meanwhile, job)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "in use by another run" in lines[0]
    assert (out / ".hydra" / "config.yaml").read_text() == "the first run's config"  # not moved aside
    assert sorted(p.name for p in out.iterdir()) == [".hydra", LOCK_NAME]
    assert json.loads((out / LOCK_NAME).read_text()) == first


def test_the_folder_is_locked_before_the_history_moves_and_through_the_job(tmp_path, front_door):
    out = tmp_path / "run"
    earlier_attempt(out)
    seen = {}

    def job():
        seen["lock"] = json.loads((out / LOCK_NAME).read_text())["pid"]
        seen["history"] = (out / ".hydra.1" / "config.yaml").read_text()
        with RunLock(out):  # the job's own lock (workflow.train) joins the front door's
            (out / "synthetic.pt").write_text("work")
        seen["after_the_jobs_lock"] = (out / LOCK_NAME).is_file()

    front_door(out, launch.preflight_train, job)
    assert seen == {"lock": os.getpid(), "history": "the first run's config", "after_the_jobs_lock": True}
    assert not (out / LOCK_NAME).exists()  # released when the job ended
    assert (out / "synthetic.pt").is_file()


def test_a_folder_this_call_made_is_gone_when_its_job_failed_before_writing(tmp_path, front_door):
    out = tmp_path / "new" / "run"

    def job():
        (out / ".hydra").mkdir()
        raise SystemExit(2)

    with pytest.raises(SystemExit):
        front_door(out, launch.preflight_train, job)
    assert not out.exists()


def test_only_the_front_doors_hold_is_joined(tmp_path):
    with RunLock(tmp_path, joinable=True), RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).is_file()
    assert not (tmp_path / LOCK_NAME).exists()  # the outermost holder removed it
    with RunLock(tmp_path), pytest.raises(RunLockedError):
        RunLock(tmp_path).acquire()  # a second run in this process is refused as any other


def test_a_lock_naming_this_pid_that_this_process_never_took_is_stale(tmp_path):
    """A restarted container gives its job the pid the crashed one had."""
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": "before the restart"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["started"] != record["started"]


# --- what the resume check reads --------------------------------------------------------------------

PAGE = mmap.PAGESIZE


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_bytes(path: Path) -> int:
    """How much of ``path`` is in the page cache (Linux ``mincore``): what was read from it since evicted."""
    size = path.stat().st_size
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    view = ctypes.c_char.from_buffer(mapped)
    pages = (ctypes.c_ubyte * ((size + PAGE - 1) // PAGE))()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    try:
        assert libc.mincore(ctypes.addressof(view), size, pages) == 0, os.strerror(ctypes.get_errno())
    finally:
        del view
        mapped.close()
    return sum(page & 1 for page in pages) * PAGE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-cache residency is read with mincore")
def test_the_resume_check_reads_the_checkpoints_structure_not_its_tensors(tmp_path, compose_train):
    cfg = compose_train(["seed=0"])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    images = torch.randn(16 * 2**20)  # 64 MiB standing in for the synthetic set and its momentum
    blob = {"state_dict": {"synthetic.images": images}, ENGINE_KEY: {}}
    torch.save({**blob, CONFIG_KEY: OmegaConf.to_container(cfg, resolve=True)}, ckpt)
    evict(ckpt)
    if cached_bytes(ckpt) > ckpt.stat().st_size // 8:
        pytest.skip("this file system keeps the file cached (tmpfs?): reads cannot be seen")
    assert check_resume(cfg, tmp_path) == ckpt
    assert cached_bytes(ckpt) < ckpt.stat().st_size // 8  # the directory, the pickle, read-ahead
