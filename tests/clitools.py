"""Command-line processes for the CLI tests: started in parallel, each test waits for its own.

Each process spends seconds importing torch, so a test module may start several commands at once and
each test collects its result; :func:`refusals` runs many refused calls in one interpreter instead. The
only time limit is a guard against a hang (HANG_S), never a speed requirement.

No command reaches the network: every download goes through a proxy at a local port that refuses
connections (:class:`Commands`), so a dataset that is nowhere on disk fails to download at once,
whether or not this machine is online.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

HANG_S = 1800  # a process still running after 30 minutes is stuck, not slow
PROXY_VARIABLES = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")


@dataclass
class Run:
    """A finished command."""

    returncode: int
    stdout: str
    stderr: str


class RefusingPort:
    """A local TCP port bound and never listened on: a connection to it is refused at once."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def close(self) -> None:
        self.socket.close()


def offline_env(env: dict[str, str], proxy: str) -> dict[str, str]:
    """``env`` with every URL fetch (urllib, hence torchvision's downloads) sent through ``proxy``."""
    env = {k: v for k, v in env.items() if k.lower() not in PROXY_VARIABLES}
    for key in ("http_proxy", "https_proxy", "ftp_proxy"):
        env[key] = env[key.upper()] = proxy
    return env


class Watched:
    """A process whose output is read as it comes, so a test can wait for a line (and pause the process)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.changed = threading.Condition()
        self.readers = [
            threading.Thread(target=self._read, args=(stream, name), daemon=True)
            for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
        ]
        self.open = len(self.readers)
        for reader in self.readers:
            reader.start()

    def _read(self, stream, name: str) -> None:
        for line in stream:
            with self.changed:
                self.lines[name].append(line)
                self.changed.notify_all()
        with self.changed:
            self.open -= 1
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = HANG_S) -> bool:
        """Block until a line of stdout or stderr holds ``text`` (True) or both streams end (False)."""

        def seen() -> bool:
            return any(text in line for lines in self.lines.values() for line in lines)

        with self.changed:
            if not self.changed.wait_for(lambda: seen() or not self.open, timeout=timeout):
                self.kill()
                pytest.fail(f"no line holding {text!r} within {timeout} s")
            return seen()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def finish(self, timeout: float) -> Run:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        for reader in self.readers:
            reader.join()
        return Run(self.proc.returncode, "".join(self.lines["stdout"]), "".join(self.lines["stderr"]))


class Commands:
    """Commands started in parallel in one working directory with an empty data directory, offline."""

    def __init__(self, root: Path) -> None:
        self.root, self.data_dir = root, root / "data"
        self.data_dir.mkdir()
        self.refusing = RefusingPort()
        self.env = offline_env({**os.environ, "DREAM_DATA_DIR": str(self.data_dir)}, self.refusing.url)
        for key in ("PROJECT_ROOT", "HYDRA_FULL_ERROR"):
            self.env.pop(key, None)
        self._procs: dict[str, subprocess.Popen | Watched] = {}
        self._runs: dict[str, Run] = {}

    def _popen(self, module: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def start(self, name: str, module: str, *args: str) -> None:
        self._procs[name] = self._popen(module, *args)

    def start_watched(self, name: str, module: str, *args: str) -> Watched:
        """Start a command whose output lines can be waited for (:meth:`Watched.wait_for`)."""
        watched = Watched(self._popen(module, *args))
        self._procs[name] = watched
        return watched

    def result(self, name: str) -> Run:
        if name not in self._runs:
            proc = self._procs.pop(name)
            try:
                if isinstance(proc, Watched):
                    self._runs[name] = proc.finish(HANG_S)
                else:
                    stdout, stderr = proc.communicate(timeout=HANG_S)
                    self._runs[name] = Run(proc.returncode, stdout, stderr)
            except subprocess.TimeoutExpired:
                if not isinstance(proc, Watched):
                    proc.kill()
                    proc.communicate()
                pytest.fail(f"{name}: hung (no result within {HANG_S} s)")
        return self._runs[name]

    def run(self, name: str, module: str, *args: str) -> Run:
        """Start a command and wait for it."""
        self.start(name, module, *args)
        return self.result(name)

    def stop(self) -> None:
        for proc in self._procs.values():
            if isinstance(proc, Watched):
                proc.resume()
                proc.kill()
            else:
                proc.kill()
                proc.communicate()
        self.refusing.close()


# Runs refused calls one after another in one interpreter: ``main()`` of the entry module with its argv;
# reaching the job (Hydra's main) is a failure, as the calls are to be refused before any work.
_REFUSALS = """
import contextlib, importlib, io, json, sys, traceback

def job_reached(*args, **kwargs):
    raise AssertionError("the call was not refused before the job started")

results = {}
for name, module, args in json.loads(sys.argv[1]):
    entry = importlib.import_module(module)
    entry._hydra_main = job_reached
    sys.argv = [module, *args]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            entry.main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results[name] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


def refusals(cmds: Commands, calls: dict[str, tuple[str, ...]]) -> dict[str, Run]:
    """``{name: (module, *args)}`` run as ``python -m module *args`` would be, all in one process.

    One interpreter imports torch once for every call: a batch of refusals costs one process's start,
    not one per call. Each call gets its own ``sys.argv``, stdout and stderr, and its ``SystemExit`` status.
    """
    plan = [[name, module, list(args)] for name, (module, *args) in calls.items()]
    proc = subprocess.run(
        [sys.executable, "-c", _REFUSALS, json.dumps(plan)],
        cwd=cmds.root,
        env=cmds.env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return {name: Run(*result) for name, result in json.loads(last).items()}


def assert_one_line_error(run: Run, *names: str) -> None:
    assert "Traceback" not in run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error:")
    for name in names:
        assert name in lines[0]
    assert run.returncode == 2
