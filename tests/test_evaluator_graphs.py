"""evaluation.compile: the evaluator's static formulation (a Lightning step per epoch) and its CUDA graphs."""

import math
import statistics
from dataclasses import replace

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor

from dream_pl.data import RealData, load_dataset
from dream_pl.evaluation.protocol import EvalResult
from dream_pl.evaluation.sets import baseline_set
from dream_pl.evaluation.stacked import StackedClassifier, epoch_lr
from dream_pl.models import create_model
from dream_pl.quiet import quiet_lightning
from dream_pl.schemas import EvalProtocol

FULL_DSA = "color_crop_cutout_flip_scale_rotate"  # every op, three geometric candidates: static picks
ONE_GEOMETRIC = "color_crop_cutout_flip"  # no pick to draw: both formulations draw alike
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def mnist() -> RealData:
    return load_dataset("mnist_5k")


def classifier(
    data: RealData,
    ipc: int,
    protocol: EvalProtocol,
    *,
    seed: int = 0,
    width: int = 8,
    norm: str = "instance",
    device: str = "cpu",
    capture: bool | None = None,
    stacked: bool | None = None,
    repeat_ids: list[int] | None = None,
) -> StackedClassifier:
    """A StackedClassifier on ``ipc`` random real images per class of ``data``."""
    images, labels = baseline_set("random", data, ipc, seed=0)
    spec = data.spec
    return StackedClassifier(
        lambda: create_model("convnet", channels=1, num_classes=10, size=28, width=width, norm=norm),
        images,
        labels,
        protocol=protocol,
        seed=seed,
        mean=spec.mean,
        std=spec.std,
        num_classes=10,
        stacked=stacked,
        device=device,
        capture=capture,
        repeat_ids=repeat_ids,
    )


def fit(module: StackedClassifier, accelerator: str = "cpu", callbacks: tuple = ()) -> pl.Trainer:
    """Train ``module`` for its protocol's epochs, as evaluate_set does."""
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=1,
            max_epochs=module.protocol.epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=list(callbacks),
        )
        trainer.fit(module)
    return trainer


def accuracies(module: StackedClassifier, data: RealData, accelerator: str = "cpu") -> list[float]:
    """Fit, then the final test accuracy of every repeat on ``data``'s real test set."""
    test = torch.utils.data.TensorDataset(data.test_images, data.test_labels)
    trainer = fit(module, accelerator)
    with quiet_lightning():
        trainer.test(module, torch.utils.data.DataLoader(test, batch_size=500), verbose=False)
    return module.accuracies()


def trained_state(module: StackedClassifier) -> list[Tensor]:
    """Parameters and network buffers (batch-norm statistics) after training, on the CPU."""
    nets = [] if module.stacked else list(module.nets.buffers())
    return [t.detach().cpu().clone() for t in (*module.parameters(), *nets)]


def trained_alike(a: StackedClassifier, b: StackedClassifier, accelerator: str = "cpu") -> list[Tensor]:
    """Fit both; their parameters and network buffers agree up to float rounding. Returns ``a``'s state."""
    fit(a, accelerator)
    fit(b, accelerator)
    state = trained_state(a)
    for x, y in zip(state, trained_state(b), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    return state


def within_noise(a: list[float], b: list[float], test_size: int) -> tuple[float, float]:
    """|mean(a - b)| and 4 standard errors of it, for two runs' accuracies paired by repeat.

    Repeat r of both runs has the same initialisation and batch order, so a_r - b_r varies through the
    augmentation draws only. Its std is the sample std of the R differences, floored at the binomial std
    of the difference of two accuracies on ``test_size`` test images, sqrt(2 p (1 - p) / M): four or five
    pairs estimate a spread poorly, and the floor keeps a lucky small one from shrinking the bound.
    """
    d = [x - y for x, y in zip(a, b, strict=True)]
    p = statistics.fmean(a + b)
    spread = max(statistics.stdev(d), math.sqrt(2 * p * (1 - p) / test_size))
    return abs(statistics.fmean(d)), 4 * spread / math.sqrt(len(d))


def test_formulation_follows_compile_and_device(mnist, mnist_protocol):
    p = replace(mnist_protocol, epochs=1, repeats=1)
    auto_cpu = classifier(mnist, 1, replace(p, compile="auto"))
    assert auto_cpu.formulation == "off"  # a CPU keeps the host-decided path: cheaper there
    assert auto_cpu.automatic_optimization
    on_cpu = classifier(mnist, 1, replace(p, compile="on"))
    assert on_cpu.formulation == "eager-static"
    assert not on_cpu.automatic_optimization  # the batch step updates the parameters itself
    assert classifier(mnist, 1, replace(p, compile="auto"), device="cuda").formulation == "graphs"
    assert classifier(mnist, 1, replace(p, compile="on"), device="cuda", capture=False).formulation == (
        "eager-static"
    )
    assert classifier(mnist, 1, replace(p, compile="off"), device="cuda").formulation == "off"
    with pytest.raises(ValueError, match="compile='fast'"):
        classifier(mnist, 1, replace(p, compile="fast"))


def test_epoch_lr_follows_multistep_schedule(mnist, mnist_protocol):
    p = replace(mnist_protocol, epochs=6, repeats=1, lr_milestones=(0.5, 0.84), dsa="", cutmix_p=0.0)
    assert p.milestones() == (3, 5)
    expected = [0.01, 0.01, 0.01, 0.002, 0.002, 0.0004]  # lr x0.2 from epoch 3 on, again from epoch 5 on
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=p.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(p.milestones()), p.lr_gamma)
    multistep = []
    for _ in range(p.epochs):
        multistep.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert multistep == pytest.approx(expected, rel=1e-12)
    assert [epoch_lr(p, e) for e in range(p.epochs)] == pytest.approx(multistep, rel=1e-12)
    paper = replace(p, epochs=1000, lr_milestones=mnist_protocol.lr_milestones)
    assert [epoch_lr(paper, e) for e in (665, 666, 832, 833, 999)] == pytest.approx(
        [0.01, 0.002, 0.002, 0.0004, 0.0004], rel=1e-12
    )

    seen: list[float] = []  # the lr tensor the batch steps read, once per Lightning step (= epoch)

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(float(module.lr))

    module = classifier(mnist, 1, replace(p, compile="on"), width=4)
    fit(module, callbacks=(Record(),))
    assert seen == pytest.approx(expected, rel=1e-6)  # float32 tensor; one entry per epoch


@pytest.mark.parametrize("stacked", [True, False], ids=["vmap", "looped"])
def test_static_epochs_equal_host_steps_where_draws_coincide(mnist, mnist_protocol, stacked):
    """One geometric op and no CutMix: the static formulation draws exactly what the host-decided steps
    draw on the device, batch for batch, so the trained networks agree up to float rounding."""
    p = replace(mnist_protocol, epochs=3, repeats=2, batch_size=8, dsa=ONE_GEOMETRIC, cutmix_p=0.0)
    host = classifier(mnist, 2, replace(p, compile="off"), stacked=stacked)  # 20 images: batches 8, 8, 4
    static = classifier(mnist, 2, replace(p, compile="on"), stacked=stacked)
    init = trained_state(static)
    for a, c in zip(trained_alike(static, host), init, strict=True):
        assert not torch.equal(a, c)  # nine steps moved every parameter


def test_static_path_is_deterministic_per_seed(mnist, mnist_protocol):
    p = replace(mnist_protocol, epochs=2, repeats=2, batch_size=8, dsa=FULL_DSA, cutmix_p=0.5, compile="on")
    runs = []
    for seed in (0, 0, 1):
        module = classifier(mnist, 2, p, seed=seed, stacked=True)
        fit(module)
        runs.append(trained_state(module))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not any(torch.equal(a, c) for a, c in zip(runs[0], runs[2], strict=True))


def test_static_formulation_trains_like_the_host_path(mnist, mnist_protocol, evaluate_on_test_set):
    """With device-side picks (three geometric ops, CutMix at 0.5) the two formulations draw differently:
    their accuracies must agree within noise, and vmap-stacked and looped static runs must agree exactly."""
    images, labels = baseline_set("random", mnist, 10, seed=0)
    p = replace(mnist_protocol, epochs=30, repeats=4, cutmix_p=0.5, stacked=False)
    assert len(p.dsa.split("_")) == 4  # mnist_5k's recipe: colour + crop, scale, rotate

    def run(**changes: object) -> EvalResult:
        return evaluate_on_test_set(mnist, images, labels, replace(p, **changes))

    host, static, static_vmap = run(compile="off"), run(compile="on"), run(compile="on", stacked=True)
    assert (host.extra["compile"], static.extra["compile"]) == ("off", "eager-static")
    for a, b in zip(static_vmap.accuracies, static.accuracies, strict=True):
        assert a == pytest.approx(b, abs=0.01)  # same draws, only the summation order differs
    assert min(static.accuracies) > 0.7, static.accuracies  # chance is 0.1; the host path gives ~0.82
    gap, bound = within_noise(static.accuracies, host.accuracies, len(mnist.test_labels))
    assert gap <= bound, (static.accuracies, host.accuracies, bound)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("norm", ["instance", "batch"], ids=["vmap", "looped-batchnorm"])
def test_captured_epochs_equal_eager_static_on_cuda(mnist, mnist_protocol, norm):
    """Captured graphs (two batch shapes: 64 and 36) replay what the same formulation computes eagerly."""
    p = replace(mnist_protocol, epochs=3, repeats=2, dsa=FULL_DSA, cutmix_p=0.5, compile="on")
    captured = classifier(mnist, 10, p, norm=norm, device="cuda")
    eager = classifier(mnist, 10, p, norm=norm, device="cuda", capture=False)
    assert (captured.formulation, eager.formulation) == ("graphs", "eager-static")
    assert captured.stacked == (norm != "batch")
    trained_alike(captured, eager, "gpu")


@pytest.mark.gpu
@cuda
def test_captured_epochs_equal_host_steps_on_cuda_where_draws_coincide(mnist, mnist_protocol):
    p = replace(mnist_protocol, epochs=3, repeats=2, dsa=ONE_GEOMETRIC, cutmix_p=0.0)
    captured = classifier(mnist, 10, replace(p, compile="auto"), device="cuda")
    host = classifier(mnist, 10, replace(p, compile="off"), device="cuda")
    trained_alike(captured, host, "gpu")


@pytest.mark.gpu
@cuda
def test_captured_accuracy_within_noise_of_eager_on_cuda(mnist, mnist_protocol):
    p = replace(mnist_protocol, epochs=60, repeats=5, dsa=FULL_DSA, cutmix_p=0.5, compile="on")
    captured = accuracies(classifier(mnist, 10, p, width=32, device="cuda"), mnist, "gpu")
    eager = accuracies(classifier(mnist, 10, p, width=32, device="cuda", capture=False), mnist, "gpu")
    assert min(captured) > 0.7, captured
    gap, bound = within_noise(captured, eager, len(mnist.test_labels))
    assert gap <= bound, (captured, eager, bound)


def test_a_repeat_trains_alike_in_any_stack(mnist, mnist_protocol):
    """Repeats dealt out over processes: repeat r's accuracy is the same whichever repeats share its stack
    (host formulation with CutMix and every DSA op, so every kind of draw is exercised)."""
    p = replace(mnist_protocol, repeats=3, epochs=3, compile="off", dsa=FULL_DSA, cutmix_p=0.5, batch_size=16)
    whole = accuracies(classifier(mnist, 2, p), mnist)
    parts = {}
    for ids in ([0, 2], [1]):
        parts.update(zip(ids, accuracies(classifier(mnist, 2, p, repeat_ids=ids), mnist), strict=True))
    assert [parts[r] for r in range(3)] == whole
    assert len(set(whole)) > 1  # the repeats differ: their streams are their own
