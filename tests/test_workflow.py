"""``dream_pl.workflow`` on its own: the parts, callbacks and messages a run is built from (no training)."""

import inspect

import pytest
from pytorch_lightning.callbacks import ModelCheckpoint

from dream_pl.callbacks import DiagnosticsHistograms, DistillProgressBar, PeriodicEvaluation, SyntheticExport
from dream_pl.data import RealSet, load_dataset
from dream_pl.engine import Engine
from dream_pl.initializers import KMeansInit
from dream_pl.matchers import GradientMatcher
from dream_pl.samplers import RandomSampler, RepresentativeSampler
from dream_pl.schemas import DistillConfig
from dream_pl.workflow import (
    build_sampler,
    checkpoint_every,
    checkpoint_state,
    distill_callbacks,
    engine_parts,
    resume_note,
)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist_5k")


def test_engine_parts_builds_every_part_of_the_engine_from_the_config(tmp_path, tiny_cfg, mnist):
    cfg = tiny_cfg(tmp_path, "diagnostics_every=4", "seed=3")
    real = RealSet.from_data(mnist, "train")
    parts = engine_parts(cfg, real, mnist.spec)
    engine_args = {k for k in inspect.signature(Engine).parameters if k not in ("collectives", "run")}
    assert set(parts) == engine_args  # every part the engine takes from a config, nothing else
    assert parts["real"] is real
    net = parts["net_factory"]()
    assert net(real.images[:2].float()).shape == (2, 10)  # the model group's network, mnist's shape
    assert net is not parts["net_factory"]()  # a builder: a fresh network per call
    assert type(parts["matcher"]) is GradientMatcher
    assert parts["matcher"].metric == "l1"
    assert type(parts["sampler"]) is RepresentativeSampler
    assert (parts["sampler"].n_clusters, parts["sampler"].embed_subset) == (16, 100)
    assert type(parts["initializer"]) is KMeansInit
    loop = parts["cfg"]
    assert type(loop) is DistillConfig
    assert (loop.ipc, loop.seed, loop.inner_loops, loop.n_data, loop.batch_real) == (1, 3, 2, 32, 16)
    assert (parts["interval"], parts["diagnostics_every"]) == (3, 4)


def test_engine_parts_of_a_sampler_without_a_schedule_have_no_interval(tmp_path, tiny_cfg, mnist):
    cfg = tiny_cfg(tmp_path, "sampler=random", "init=random")
    parts = engine_parts(cfg, RealSet.from_data(mnist, "train"), mnist.spec)
    assert type(parts["sampler"]) is RandomSampler
    assert parts["interval"] is None


def test_build_sampler_drops_the_interval_and_passes_every_other_knob(compose_train):
    node = compose_train(["sampler=dream", "sampler.interval=7", "sampler.n_clusters=32"]).sampler
    sampler = build_sampler(node)
    assert (sampler.n_clusters, sampler.n_per_cluster) == (32, 1)
    assert not hasattr(sampler, "interval")
    assert node.interval == 7  # the config itself is left as it was


def test_checkpoint_every_counts_inner_steps(compose_train):
    cfg = compose_train(["distill.save_every=3", "distill.inner_loops=5"])
    assert checkpoint_every(cfg) == 15


def test_resume_note_says_fresh_or_from_which_checkpoint(tmp_path, compose_train):
    cfg = compose_train(["iterations=4", "distill.inner_loops=5"])
    assert resume_note(None, cfg) == "a new run of 20 steps"
    last = tmp_path / "last.ckpt"
    assert resume_note(last, cfg) == f"resuming from {last} (20 steps in all)"


def test_checkpoint_state_says_whether_a_stopped_run_can_resume(tmp_path):
    assert checkpoint_state(tmp_path, 40) == "no checkpoint was written yet (the first is due at step 40)"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    said = checkpoint_state(tmp_path, 40)
    assert str(tmp_path / "checkpoints" / "last.ckpt") in said
    assert f"rerun on out_dir={tmp_path} to resume" in said


def kinds(callbacks) -> list[type]:
    return [type(c) for c in callbacks]


def test_a_plain_run_checkpoints_and_exports_only(tmp_path, tiny_cfg, mnist):
    cfg = tiny_cfg(tmp_path, "distill.save_every=2")  # no diagnostics, no periodic evaluation, no bar
    callbacks = distill_callbacks(cfg, tmp_path, mnist)
    assert kinds(callbacks) == [ModelCheckpoint, SyntheticExport]
    checkpoint, export = callbacks
    assert checkpoint.dirpath == str(tmp_path / "checkpoints")
    assert (checkpoint._every_n_train_steps, checkpoint.save_top_k, checkpoint.save_last) == (4, 2, True)
    assert (export.dirpath, export.every_n_steps) == (tmp_path, 4)


@pytest.mark.parametrize(
    ("extra", "added"),
    [
        (("trainer.enable_progress_bar=true",), [DistillProgressBar]),
        (("diagnostics_every=5",), [DiagnosticsHistograms]),
        (("eval_every=2",), [PeriodicEvaluation]),
        (
            ("trainer.enable_progress_bar=true", "diagnostics_every=1", "eval_every=1"),
            [DistillProgressBar, DiagnosticsHistograms, PeriodicEvaluation],
        ),
    ],
)
def test_each_optional_callback_comes_with_its_setting(tmp_path, tiny_cfg, mnist, extra, added):
    cfg = tiny_cfg(tmp_path, *extra)
    assert kinds(distill_callbacks(cfg, tmp_path, mnist)) == [ModelCheckpoint, SyntheticExport, *added]


def test_the_periodic_evaluation_runs_every_eval_every_outer_iterations_with_the_periodic_protocol(
    tmp_path, tiny_cfg, mnist
):
    cfg = tiny_cfg(tmp_path, "eval_every=3", "evaluation.periodic.epochs=7", "evaluation.periodic.repeats=2")
    (periodic,) = [c for c in distill_callbacks(cfg, tmp_path, mnist) if isinstance(c, PeriodicEvaluation)]
    assert periodic.every_n_steps == 3 * cfg.distill.inner_loops
    assert periodic.name == cfg.evaluation.models[0]
    assert (periodic.protocol.epochs, periodic.protocol.repeats) == (7, 2)
    assert periodic.inner_loops == cfg.distill.inner_loops


def test_the_progress_bar_counts_the_runs_own_steps(tmp_path, tiny_cfg, mnist):
    cfg = tiny_cfg(tmp_path, "trainer.enable_progress_bar=true", "iterations=5")
    (bar,) = [c for c in distill_callbacks(cfg, tmp_path, mnist) if isinstance(c, DistillProgressBar)]
    assert (bar.inner_loops, bar.iterations) == (2, 5)
