"""Command-line processes for the CLI tests: started in parallel, each test waits for its own.

Each process spends seconds importing torch, so a test module starts all of its commands at once and
each test collects its result. The only time limit is a guard against a hang (HANG_S), never a speed
requirement.
"""

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HANG_S = 1800  # a process still running after 30 minutes is stuck, not slow


@dataclass
class Run:
    """A finished command."""

    returncode: int
    stdout: str
    stderr: str


def online(host: str = "www.cs.toronto.edu", port: int = 443) -> bool:
    """Whether CIFAR's download server is reachable (then the offline-error case cannot be provoked)."""
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        return False
    return True


class Commands:
    """Commands started in parallel in one working directory with an empty data directory."""

    def __init__(self, root: Path) -> None:
        self.root, self.data_dir = root, root / "data"
        self.data_dir.mkdir()
        self.env = {**os.environ, "DREAM_DATA_DIR": str(self.data_dir)}
        for key in ("PROJECT_ROOT", "HYDRA_FULL_ERROR"):
            self.env.pop(key, None)
        self._procs: dict[str, subprocess.Popen] = {}
        self._runs: dict[str, Run] = {}

    def start(self, name: str, module: str, *args: str) -> None:
        self._procs[name] = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def names(self) -> list[str]:
        """Every command started (running or finished)."""
        return [*self._procs, *self._runs]

    def started(self, name: str) -> bool:
        return name in self._procs or name in self._runs

    def result(self, name: str) -> Run:
        if name not in self._runs:
            proc = self._procs.pop(name)
            try:
                stdout, stderr = proc.communicate(timeout=HANG_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                pytest.fail(f"{name}: hung (no result within {HANG_S} s)")
            self._runs[name] = Run(proc.returncode, stdout, stderr)
        return self._runs[name]

    def result_if_done(self, name: str) -> Run | None:
        """The result if the command has ended, else None (never waits)."""
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            return None
        return self.result(name)

    def run(self, name: str, module: str, *args: str) -> Run:
        """Start a command and wait for it."""
        self.start(name, module, *args)
        return self.result(name)

    def stop(self) -> None:
        for proc in self._procs.values():
            proc.kill()
            proc.communicate()


def assert_one_line_error(run: Run, *names: str) -> None:
    assert "Traceback" not in run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error:")
    for name in names:
        assert name in lines[0]
    assert run.returncode == 2
