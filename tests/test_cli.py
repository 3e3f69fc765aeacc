"""End-to-end tests of the ``python -m dream_pl.train`` / ``dream_pl.evaluate`` command lines.

A user mistake must end with status 2 and one ``error:`` line on stderr naming the bad value and the
allowed ones, never a traceback. Each process spends several seconds importing torch and Lightning, so
all of them start together when the module's first test asks for one, and each test waits for its own.
Six processes on two loaded cores can take minutes, so the only time limit is a guard against a hang
(HANG_S), never a speed requirement.
"""

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dream_pl.synthetic import load_synthetic

HANG_S = 1800  # a process still running after 30 minutes is stuck, not slow
DEFAULT_DATASET_ALLOWED = ["1..400"]  # mnist_5k: 400 training images per class


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

    def stop(self) -> None:
        for proc in self._procs.values():
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> Commands:
    cmds = Commands(tmp_path_factory.mktemp("cli"))
    train, evaluate = "dream_pl.train", "dream_pl.evaluate"
    cmds.start(
        "smoke",
        train,
        "debug=fdr",
        "ipc=1",
        f"out_dir={cmds.root / 'run'}",
        "model.width=8",
        "sampler.n_clusters=16",
    )
    cmds.start("unknown_sampler", train, "sampler=foo")
    cmds.start("ipc_0", train, "ipc=0")
    cmds.start("too_many_clusters", train, "sampler.n_clusters=5000")
    cmds.start("missing_synthetic", evaluate, "synthetic=/nonexistent/path.pt")
    if not online():
        cmds.start(
            "cifar100_offline",
            train,
            "dataset=cifar100",
            "ipc=10",
            "sampler=dream",
            f"data_dir={cmds.data_dir}",
        )
    yield cmds
    cmds.stop()


def assert_one_line_error(run: Run, *names: str) -> None:
    assert "Traceback" not in run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error:")
    for name in names:
        assert name in lines[0]
    assert run.returncode == 2


def test_unknown_group_option(commands):
    run = commands.result("unknown_sampler")
    assert_one_line_error(run, "'foo'", "dream", "herding", "kcenter", "random", "representative")


def test_out_of_range_value(commands):
    assert_one_line_error(commands.result("ipc_0"), "ipc=0", ">= 1")


def test_selection_larger_than_a_class_of_the_default_dataset(commands):
    assert_one_line_error(commands.result("too_many_clusters"), "5000", "mnist_5k", *DEFAULT_DATASET_ALLOWED)


def test_missing_dataset_offline_says_what_to_put_where(commands):
    if not commands.started("cifar100_offline"):
        pytest.skip("the CIFAR download server is reachable: the offline error cannot be provoked")
    run = commands.result("cifar100_offline")
    assert_one_line_error(run, "cifar100", "cifar-100-python", str(commands.data_dir))


def test_evaluate_missing_synthetic_set(commands):
    assert_one_line_error(commands.result("missing_synthetic"), "/nonexistent/path.pt")


def test_fast_dev_run_writes_every_artifact(commands):
    run = commands.result("smoke")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    out = commands.root / "run"
    for name in ("synthetic.pt", "synthetic.png", "eval.json", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    assert f"run directory: {out}" in run.stdout + run.stderr  # the run says where its results are
    assert "faiss.loader" not in run.stdout + run.stderr  # the loader's SIMD fallback chatter is held back
    synthetic = load_synthetic(out)
    # 10 classes x ipc 1 stored images, each decoding to factor^2 = 4 training images of 1 x 28 x 28
    assert (synthetic.dataset, synthetic.factor, synthetic.ipc) == ("mnist_5k", 2, 1)
    assert tuple(synthetic.images.shape) == (40, 1, 28, 28)
    assert sorted(synthetic.labels.tolist()) == sorted(list(range(10)) * 4)
    rows = {row["set"]: row for row in json.loads((out / "eval.json").read_text())}
    assert rows["distilled"]["images"] == 40
    assert rows["random real (ipc 1)"]["images"] == 10
    for row in rows.values():
        assert row["model"] == "convnet"
        assert 0.0 <= row["mean"] <= 100.0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2  # debug=fdr: 1 outer iteration x 2 inner loops
