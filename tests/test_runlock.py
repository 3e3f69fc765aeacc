"""One run per run folder: the lock refuses a live holder, takes over a dead one, and names who holds it."""

import json
import os
import socket
from pathlib import Path

import pytest

from dream_pl.runlock import LOCK_NAME, RunLock, RunLockedError


def test_second_holder_is_refused_with_one_line_naming_the_first(tmp_path):
    with RunLock(tmp_path):
        held = json.loads((tmp_path / LOCK_NAME).read_text())
        assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(RunLockedError) as err:
            RunLock(tmp_path).acquire()
        message = str(err.value)
        assert "\n" not in message
        assert f"pid {os.getpid()}" in message
        assert str(tmp_path) in message
        assert "another out_dir" in message
    assert not (tmp_path / LOCK_NAME).exists()  # released


def pid_that_cannot_exist() -> int:
    """A pid above the kernel's largest: no process has it, now or later (a finished child's may be reused).

    Linux's pid_max is at most 2**22 (PID_MAX_LIMIT); elsewhere that bound is above any pid as well.
    """
    pid_max = Path("/proc/sys/kernel/pid_max")
    return (int(pid_max.read_text()) if pid_max.is_file() else 2**22) + 1


def test_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    stale = {"host": socket.gethostname(), "pid": pid_that_cannot_exist(), "started": "2026-01-01 00:00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with caplog.at_level("WARNING"), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text


def test_lock_of_a_live_process_on_another_host_is_respected(tmp_path):
    other = {"host": "elsewhere", "pid": 1, "started": "2026-01-01 00:00:00"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(RunLockedError, match="pid 1 on elsewhere"):
        RunLock(tmp_path).acquire()
    RunLock(tmp_path).release()  # not ours: left alone
    assert (tmp_path / LOCK_NAME).is_file()


def test_train_refuses_a_folder_another_run_holds(tmp_path, tiny_cfg):
    from dream_pl.workflow import train

    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "t0"}))
    with pytest.raises(RunLockedError):
        train(tiny_cfg(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # nothing was written


def test_evaluate_refuses_an_output_folder_another_run_holds(tmp_path, compose_eval):
    from dream_pl.workflow import evaluate

    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "t0"}))
    with pytest.raises(RunLockedError):
        evaluate(compose_eval(["synthetic=random", "ipc=1", f"out_dir={tmp_path}"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]
