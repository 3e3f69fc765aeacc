"""Classes sharded over processes (``trainer=ddp``, gloo on the CPU): the same run as one process.

The two runs are compared with one thread per process (``OMP_NUM_THREADS=1``): a different thread count
changes float reduction order, which can flip which image is nearest a K-means centre; with equal thread
counts the sharded run equals the single-process run bit for bit.

The default tier keeps one multi-process check (the class rows gathered over two gloo processes); the
trainings over several processes are the slow tier's. The module imports no Lightning at the top: a
spawned process imports it again to find its function.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clitools import HANG_S

from dream_pl.sharding import Shard, owned_classes
from dream_pl.synthetic import load_synthetic

RUN = (
    "ipc=1",
    "model.width=8",
    "distill.inner_loops=3",
    "distill.n_data=32",
    "distill.batch_real=16",
    "distill.save_every=1",
    "distill.lr_img=3",  # the images move by O(1) in a few steps, so a difference could not hide
    "sampler.interval=2",
    "sampler.embed_subset=100",
    "sampler.n_clusters=16",
    "evaluation.enabled=false",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
)
DDP = ("trainer=ddp", "trainer.devices=2")
UNSPLIT = ("distill.shard_net_update=false",)  # every network update whole on every process: bit for bit


def train(out: Path, *extra: str, limit: float = HANG_S, base: tuple[str, ...] = RUN) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "dream_pl.train", *base, *extra, f"out_dir={out}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=limit,
    )
    assert run.returncode == 0, run.stderr[-3000:]


def test_owned_classes_are_dealt_round_robin_and_cover_every_class_once():
    shares = [owned_classes(10, rank, 3) for rank in range(3)]
    assert shares == [(0, 3, 6, 9), (1, 4, 7), (2, 5, 8)]
    assert sorted(c for share in shares for c in share) == list(range(10))
    assert owned_classes(2, 3, 4) == ()  # more processes than classes: some own none


def test_without_a_process_group_one_process_owns_every_class():
    shard = Shard.current(5)
    assert (shard.rank, shard.world, shard.classes, shard.sharded) == (0, 1, (0, 1, 2, 3, 4), False)
    grad = torch.ones(3)
    assert shard.sum_(grad) is grad  # a no-op


def _gather_on_two(rank: int, init: str, results: Path) -> None:
    """Rank ``rank`` of 2 gloo processes: gather class rows for a few class counts, save what it got."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    got = {}
    for num_classes in (5, 4, 1):  # uneven shares, even shares, a process that holds no class
        whole = torch.arange(num_classes * 3 * 2, dtype=torch.float32).view(num_classes * 3, 2)
        shard = Shard.current(num_classes)
        local = shard.own_rows(whole, 3)
        got[num_classes] = {
            "local": local,
            "everywhere": shard.gather_classes(local, 3, num_classes),
            "on_0": shard.gather_classes(local, 3, num_classes, dst=0),
            "labels": shard.gather_classes(
                torch.tensor(shard.classes, dtype=torch.long).repeat_interleave(3), 3, num_classes
            ),
        }
    torch.save(got, results / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_class_rows_gathered_over_two_processes_are_every_class_in_order(tmp_path):
    """What a checkpoint and an export rely on: each process's own classes' rows, gathered, are the
    class-major whole; on rank 0 alone with ``dst=0``; and ``own_rows`` cuts a process's rows back out."""
    torch.multiprocessing.spawn(_gather_on_two, args=(f"file://{tmp_path / 'group'}", tmp_path), nprocs=2)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for num_classes, parts in got.items():
            whole = torch.arange(num_classes * 3 * 2, dtype=torch.float32).view(num_classes * 3, 2)
            owned = owned_classes(num_classes, rank, 2)
            assert parts["local"].shape == (3 * len(owned), 2)
            assert torch.equal(parts["everywhere"], whole)
            assert torch.equal(parts["labels"], torch.arange(num_classes).repeat_interleave(3))
            assert torch.equal(parts["on_0"], whole) if rank == 0 else parts["on_0"] is None


def _two_classes(rank: int, world: int, init: str, results: Path) -> None:
    """Distil mnist_5k's first two classes on ``world`` gloo processes (one thread each), then checkpoint
    and export: what each process held and what rank 0 got."""
    import torch.distributed as dist
    from conftest import tiny_train_config

    from dream_pl.data import RealSet, load_dataset
    from dream_pl.workflow import build_module

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    cfg = tiny_train_config(results, "sampler=random", "init=random", "distill.lr_img=3", *UNSPLIT)
    data = load_dataset(cfg.dataset.name)
    first = data.train_labels < 2
    real = RealSet(
        data.train_images[first], data.train_labels[first], data.spec.mean, data.spec.std, "cpu", 2
    )
    module = build_module(cfg, real, data.spec)
    module.prepare()
    for step in range(3):
        module.engine.step(step)
    checkpoint = {
        "state_dict": module.state_dict(),
        "optimizer_states": [module.engine.image_opt.state_dict()],
    }
    module.on_save_checkpoint(checkpoint)
    exported = module.export(dst=0)
    torch.save(
        {
            "held": module.engine.synthetic.classes,
            "images": checkpoint["state_dict"]["synthetic.images"],
            "momentum": checkpoint["optimizer_states"][0]["state"][0]["momentum_buffer"],
            "exported": None if exported is None else exported.stored,
        },
        results / f"k{world}_rank{rank}.pt",
    )
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.slow
def test_more_processes_than_classes_one_holds_none_and_rank_0_gathers_the_whole_set(tmp_path):
    """Two classes on three processes: rank 2 holds no image, takes zero steps and still joins every
    collective; rank 0's checkpoint and export hold both classes' images and momentum, as one process's."""
    threads = torch.get_num_threads()
    try:
        _two_classes(0, 1, "", tmp_path)  # the one-process reference, in this process
    finally:
        torch.set_num_threads(threads)
    torch.multiprocessing.spawn(_two_classes, args=(3, f"file://{tmp_path / 'group'}", tmp_path), nprocs=3)
    one = torch.load(tmp_path / "k1_rank0.pt")
    ranks = [torch.load(tmp_path / f"k3_rank{r}.pt") for r in range(3)]
    assert [r["held"] for r in ranks] == [(0,), (1,), ()]
    assert one["images"].shape[0] == 2  # ipc 1, two classes
    for key in ("images", "momentum", "exported"):
        torch.testing.assert_close(ranks[0][key], one[key], rtol=0, atol=1e-6)
    assert ranks[1]["exported"] is None
    assert ranks[2]["images"].shape[0] == 0  # what rank 2 would have written: its (empty) share


def diagnostics(out: Path) -> list[float]:
    """The logged ``distill/diag/mmd_selected`` values of a run, in step order."""
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    return [float(r["distill/diag/mmd_selected"]) for r in rows if r.get("distill/diag/mmd_selected")]


@pytest.mark.slow
def test_two_processes_give_the_single_process_images_and_resume_on_one(tmp_path):
    """Bit for bit with every network update computed whole on every process (shard_net_update=false)."""
    logged = (
        "diagnostics_every=2",
        "logger=csv",
        "trainer.log_every_n_steps=1",
        "distill.shard_net_update=false",
    )
    train(tmp_path / "two", *DDP, "iterations=2", *logged)
    train(tmp_path / "one", "iterations=2", *logged)
    # the diagnostics of every class, computed where each class is held and merged, as one process has them
    assert len(set(diagnostics(tmp_path / "one"))) == 3  # steps 0, 2, 4
    assert diagnostics(tmp_path / "two") == pytest.approx(diagnostics(tmp_path / "one"), rel=1e-5)
    two, one = load_synthetic(tmp_path / "two"), load_synthetic(tmp_path / "one")
    moved = (one.images - load_synthetic(tmp_path / "one" / "synthetic_init.pt").images).abs().max()
    assert moved > 0.5
    torch.testing.assert_close(two.images, one.images, rtol=0, atol=1e-6)
    # a run checkpointed on two processes resumes on one and ends as the uninterrupted run
    train(tmp_path / "moved", *DDP, "iterations=1", "distill.shard_net_update=false")
    train(tmp_path / "moved", "iterations=2", "distill.shard_net_update=false")
    torch.testing.assert_close(load_synthetic(tmp_path / "moved").images, one.images, rtol=0, atol=1e-6)
    # and one checkpointed on one process resumes on two, each taking its classes' rows of the set
    train(tmp_path / "grown", "iterations=1", "distill.shard_net_update=false")
    train(tmp_path / "grown", *DDP, "iterations=2", "distill.shard_net_update=false")
    torch.testing.assert_close(load_synthetic(tmp_path / "grown").images, one.images, rtol=0, atol=1e-6)
    logs = sorted(p.name for p in (tmp_path / "two").glob("*.log"))
    assert logs == ["train.log", "train_rank1.log"]  # both processes wrote into the one run folder
    for rank, name in enumerate(logs):  # each process held half the real and synthetic sets: its classes'
        text = (tmp_path / "two" / name).read_text()
        assert f"rank {rank} holds the real images of 5 of 10 classes: 1.5 of 3.0 MB" in text
        assert f"rank {rank} holds the synthetic images of 5 of 10 classes: 0.01 of 0.03 MB" in text


def net_losses(out: Path) -> list[float]:
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    return [float(r["distill/net_loss"]) for r in rows if r.get("distill/net_loss")]


@pytest.mark.slow
def test_network_updates_split_over_two_processes_match_one_process(tmp_path):
    """shard_net_update (the default): each process computes every 2nd row of a network update and the
    gradients are summed; equal to one process up to floating-point order. Random matching batches and
    init: with DREAM, a rounding difference can flip which image is nearest a K-means centre, after which
    the runs legitimately part (the exact comparison is the test above, shard_net_update=false)."""
    run = ("iterations=2", "logger=csv", "trainer.log_every_n_steps=1", "distill.lr_img=0.1")
    run += ("sampler=random", "init=random")
    base = tuple(o for o in RUN if not o.startswith("sampler."))  # the random sampler has none of those
    train(tmp_path / "two", *DDP, *run, base=base)
    train(tmp_path / "one", *run, base=base)
    two, one = load_synthetic(tmp_path / "two"), load_synthetic(tmp_path / "one")
    assert (one.images - load_synthetic(tmp_path / "one" / "synthetic_init.pt").images).abs().max() > 0.01
    torch.testing.assert_close(two.images, one.images, rtol=0, atol=1e-4)
    assert net_losses(tmp_path / "two") == pytest.approx(net_losses(tmp_path / "one"), rel=1e-4)


@pytest.mark.slow
def test_the_evaluation_is_dealt_over_processes_and_equals_one_processes(tmp_path):
    """The (architecture, set) pairs are dealt out and gathered: the one-process rows, accuracy for accuracy.

    Also a hang guard: torchmetrics syncs over every initialised process group by default, and a process
    that never computes an accuracy would leave the other waiting (it did, before ``sync_on_compute=False``).
    """
    evaluation = ("evaluation.enabled=true", "eval_every=1", "evaluation.periodic.epochs=2")
    tiny = ("evaluation.epochs=2", "evaluation.repeats=2", "logger=csv", "iterations=2")
    train(tmp_path / "two", *DDP, *evaluation, *tiny, limit=900)
    train(tmp_path / "one", *evaluation, *tiny, limit=900)
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    sets = ["distilled", "initialisation", "random real (ipc 1)"]
    assert [r["set"] for r in two] == [r["set"] for r in one] == sets
    assert [r["accuracies"] for r in two] == [r["accuracies"] for r in one]
    assert (tmp_path / "two" / "csv" / "metrics.csv").is_file()


@pytest.mark.slow
def test_dream_pl_evaluate_over_two_processes_equals_one(tmp_path):
    """``dream_pl.evaluate trainer=ddp``: the (architecture, set) pairs dealt over 2 processes started by
    Lightning Fabric; eval.json equals the one-process file accuracy for accuracy, rank 0 alone writes it."""
    train(tmp_path / "run", "iterations=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tiny = ("evaluation.epochs=2", "repeats=2", "model.width=8", "trainer.enable_progress_bar=false")

    def evaluate(out: Path, *extra: str) -> list[dict]:
        args = [sys.executable, "-m", "dream_pl.evaluate", f"synthetic={tmp_path / 'run'}", f"out_dir={out}"]
        run = subprocess.run([*args, *tiny, *extra], env=env, capture_output=True, text=True, timeout=HANG_S)
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads((out / "eval.json").read_text())

    two = evaluate(tmp_path / "two", *DDP, "trainer.accelerator=cpu")
    one = evaluate(tmp_path / "one")
    assert [r["set"] for r in two] == [r["set"] for r in one] == ["distilled", "random real (ipc 1)"]
    assert [r["accuracies"] for r in two] == [r["accuracies"] for r in one]
    assert sorted(p.name for p in (tmp_path / "two").glob("*.log")) == ["evaluate.log", "evaluate_rank1.log"]
