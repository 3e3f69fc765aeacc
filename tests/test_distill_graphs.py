"""distill.compile: the capturable step (device-side draws and decisions) and its CUDA-graph replay."""

import dataclasses

import pytest
import torch
from torch import Tensor

from dream_pl.config import ConfigError
from dream_pl.data import RealSet, load_dataset
from dream_pl.distill import DistillModule
from dream_pl.workflow import build_module, distill

ONE_NET_STEP = ("distill.batch_real=32", "distill.n_data=32")  # one network update per inner step


def prepared(cfg, *, compile_mode: str, device: str = "cpu", dtype=torch.float32) -> DistillModule:
    """A module as a run builds it, prepared on ``device`` outside a Trainer."""
    data = load_dataset(cfg.dataset.name)
    module = build_module(cfg, RealSet.from_data(data, "train"), data.spec)
    module.cfg = dataclasses.replace(module.cfg, compile=compile_mode)
    module = module.to(device=device, dtype=dtype)
    module.net.to(dtype)
    module.prepare()
    module.real.mean, module.real.std = module.real.mean.to(dtype), module.real.std.to(dtype)
    return module


def state_after(
    module: DistillModule, steps: int, start: int = 0, interval: int = 2
) -> tuple[Tensor, list[Tensor]]:
    """Stored images and the matching network's parameters after standalone inner steps start..steps-1."""
    for step in range(start, steps):
        if step % interval == 0:
            module.refresh_selection(step)
        module.distill_step(step)
    return module.synthetic.images.detach().clone(), [p.detach().clone() for p in module.net.parameters()]


def test_static_step_equals_the_host_step_where_their_draws_coincide(tmp_path, tiny_cfg):
    """mnist_5k's recipe has one geometric DSA op and no CutMix: the capturable step draws what the
    host-decided step draws (for the first network update), so one whole inner step must agree."""
    cfg = tiny_cfg(tmp_path, "sampler=random", "init=random", *ONE_NET_STEP)
    host, static = prepared(cfg, compile_mode="off"), prepared(cfg, compile_mode="on")
    assert not host.static
    assert static.static
    assert not static.capture  # no CUDA here: the same formulation, run eagerly
    host_out, static_out = host.distill_step(0), static.distill_step(0)
    torch.testing.assert_close(static_out["loss"], host_out["loss"])
    torch.testing.assert_close(static_out["net_loss"], host_out["net_loss"])
    torch.testing.assert_close(static.synthetic.images, host.synthetic.images)
    for p, q in zip(static.net.parameters(), host.net.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert not torch.equal(static.synthetic.images, prepared(cfg, compile_mode="on").synthetic.images)


@pytest.mark.parametrize("chunk", [1, 0])
def test_static_run_over_an_outer_boundary_matches_a_host_run_in_distribution(tmp_path, tiny_cfg, chunk):
    """Over several outer iterations (networks redrawn in place) the capturable step keeps learning:
    its matching loss falls like the host step's, and its images stay finite and in range."""
    cfg = tiny_cfg(tmp_path, "sampler=dream", "distill.lr_img=0.1", f"distill.class_chunk={chunk}")
    static = prepared(cfg, compile_mode="on")
    static.refresh_selection(0)
    first = float(static.distill_step(0)["loss"])
    images, params = state_after(static, 6, start=1)
    last = float(static.distill_step(6)["loss"])
    assert torch.isfinite(images).all()
    assert all(torch.isfinite(p).all() for p in params)
    fresh = prepared(cfg, compile_mode="on")
    assert not torch.equal(images, fresh.synthetic.images)
    assert last < first, (first, last)
    # the redrawn network of outer iteration 3 is the host run's, written into the same tensors
    host = prepared(cfg, compile_mode="off")
    host._new_net(3)
    static._new_net(3)
    for p, q in zip(static.net.parameters(), host.net.parameters(), strict=True):
        assert torch.equal(p, q)
    assert all(not b.any() for b in static._net_momentum())


def test_static_run_resumes_to_the_same_result(tmp_path, monkeypatch, tiny_cfg):
    full = distill(tiny_cfg(tmp_path / "full", "distill.compile=on"))[0].synthetic.images.detach().clone()
    original = DistillModule._train_net_static

    def crash_at_step_3(self, step):
        if step == 3:
            raise RuntimeError("simulated crash")
        return original(self, step)

    monkeypatch.setattr(DistillModule, "_train_net_static", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        distill(tiny_cfg(tmp_path / "resumed", "distill.compile=on"))
    monkeypatch.setattr(DistillModule, "_train_net_static", original)
    resumed = distill(tiny_cfg(tmp_path / "resumed", "distill.compile=on"))[0].synthetic.images.detach()
    torch.testing.assert_close(resumed, full, rtol=0, atol=0)


def test_compile_on_refuses_what_it_cannot_capture(tmp_path, tiny_cfg):
    cfg = tiny_cfg(tmp_path, "sampler=random", "init=random", "distill.image_step=per_class")
    with pytest.raises(ConfigError, match=r"compile=on cannot run with distill\.image_step=per_class"):
        prepared(cfg, compile_mode="on")
    assert not prepared(cfg, compile_mode="auto").static  # auto falls back to the host step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sampler", ["random", "dream"])
def test_captured_steps_equal_the_same_steps_run_eagerly(tmp_path, tiny_cfg, sampler):
    """CUDA graphs replay exactly the eager capturable step: 6 inner steps over 3 outer iterations (two
    network redraws in place, clustering events), float64 so rounding cannot hide a wrong replay."""
    cfg = tiny_cfg(tmp_path, f"sampler={sampler}", "init=random", "distill.lr_img=0.1")
    captured = prepared(cfg, compile_mode="on", device="cuda", dtype=torch.float64)
    eager = prepared(cfg, compile_mode="on", device="cuda", dtype=torch.float64)
    eager.capture = False
    assert captured.capture
    images, params = state_after(captured, 6)
    eager_images, eager_params = state_after(eager, 6)
    assert set(captured._graphs) == {"match", "net"}
    torch.testing.assert_close(images, eager_images, rtol=1e-9, atol=1e-12)
    for p, q in zip(params, eager_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    assert not torch.equal(images, prepared(cfg, compile_mode="on", device="cuda").synthetic.images.double())


def test_a_resumed_networks_momentum_follows_the_module_to_its_device_and_dtype(tmp_path, tiny_cfg):
    """Lightning restores before it moves the module: the network optimiser's state must follow it
    (here a dtype move stands for the device move, which takes the same path)."""
    cfg = tiny_cfg(tmp_path, "sampler=random", "init=random")
    module = prepared(cfg, compile_mode="on")
    module.distill_step(0)
    state = module.net_opt.state_dict()
    restored = prepared(cfg, compile_mode="on")
    restored.net_opt.load_state_dict(state)  # as on_load_checkpoint does, before the move
    restored.to(torch.float64)
    restored.prepare()
    for p in restored.net.parameters():
        assert restored.net_opt.state[p]["momentum_buffer"].dtype == torch.float64
    assert all(b.dtype == torch.float64 for b in restored._net_momentum())


def test_a_process_holding_no_classes_takes_the_others_image_step(tmp_path, tiny_cfg):
    """More processes than classes: a process with none matches nothing and adds zeros to the sum."""
    import torch.distributed as dist

    from dream_pl.sharding import Shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for mode in ("off", "on"):
            cfg = tiny_cfg(tmp_path / mode, "sampler=random", "init=random")
            module = prepared(cfg, compile_mode=mode)
            module.shard, module.real = Shard(0, 2, ()), module.real.keep(())
            before = module.synthetic.images.detach().clone()
            out = module.distill_step(0)
            assert float(out["loss"]) == 0.0
            assert torch.equal(module.synthetic.images, before)  # a zero gradient: nothing moves
    finally:
        dist.destroy_process_group()


def test_resuming_with_the_other_step_formulation_says_so(tmp_path, tiny_cfg, caplog):
    """compile=auto picks by device: a run checkpointed by one formulation and resumed with the other is
    told that its random draws part from an uninterrupted run's."""
    distill(tiny_cfg(tmp_path, "iterations=1", "distill.compile=on"))
    with caplog.at_level("WARNING", logger="dream_pl.distill"):
        distill(tiny_cfg(tmp_path, "iterations=2", "distill.compile=off"))
    assert "written by the static step and it continues with the host step" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="dream_pl.distill"):
        distill(tiny_cfg(tmp_path, "iterations=3", "distill.compile=off"))
    assert "continues with" not in caplog.text
