"""The evaluator: protocol arithmetic, stacked vs sequential training, baselines, bad inputs (real MNIST)."""

import json
import logging
import warnings
from dataclasses import replace

import pytest
import torch
from hydra import compose, initialize_config_dir

from dream_pl.config import CONF_DIR
from dream_pl.data import load_dataset
from dream_pl.evaluate import expand_model_list
from dream_pl.evaluation.sets import DISTILLED, SetMismatchError, baseline_label, baseline_set, load_set
from dream_pl.evaluation.stacked import StackedClassifier
from dream_pl.models import create_model, has_batch_norm
from dream_pl.quiet import quiet_lightning
from dream_pl.seeding import derive
from dream_pl.synthetic import SyntheticData, save_synthetic
from dream_pl.workflow import evaluate


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist_5k")


def factory(width=16):
    return lambda: create_model("convnet", channels=1, num_classes=10, size=28, width=width)


@pytest.fixture
def run(mnist, mnist_protocol, evaluate_on_test_set):
    """Evaluate (images, labels) with the shipped protocol (mnist_5k's recipe), shortened."""

    def evaluate_with(images, labels, *, stacked, epochs=30, repeats=3, cutmix_p=0.0):
        protocol = replace(mnist_protocol, epochs=epochs, repeats=repeats, cutmix_p=cutmix_p, stacked=stacked)
        return evaluate_on_test_set(mnist, images, labels, protocol)

    return evaluate_with


def test_protocol_milestones_and_description(mnist_protocol):
    p = mnist_protocol
    assert (p.epochs, p.repeats, p.batch_size, p.lr, p.lr_gamma) == (1000, 5, 64, 0.01, 0.2)  # the paper's
    assert p.milestones() == (666, 833)  # the authors' MultiStepLR at 2E/3 and 5E/6
    assert "1000 epochs" in p.describe()
    assert "final-epoch" in p.describe()


def test_random_real_ipc10_far_above_chance(mnist, run):
    images, labels = baseline_set("random", mnist, 10, seed=0)
    assert images.shape == (100, 1, 28, 28)
    assert torch.equal(torch.bincount(labels), torch.full((10,), 10))
    result = run(images, labels, stacked=None, repeats=2)
    assert result.extra["stacked"] is False  # on a CPU the repeats run in a loop (vmap is slower there)
    assert len(result.accuracies) == 2
    assert result.mean > 60, result.accuracies  # chance is 10%


def test_evaluator_fits_hold_back_lightning_banners(mnist, run, caplog):
    images, labels = baseline_set("random", mnist, 1, seed=0)
    pl_log = logging.getLogger("pytorch_lightning")
    before = pl_log.level
    with caplog.at_level(logging.INFO):
        run(images, labels, stacked=False, epochs=1, repeats=1)
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("after the fit")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("GPU available" in m or "stopped" in m for m in messages), messages
    assert "after the fit" in messages  # info lines come back once the evaluator is done
    assert pl_log.level == before
    with pytest.warns(UserWarning, match="kept"), quiet_lightning():
        warnings.warn("kept", UserWarning, stacklevel=1)  # other warnings are not swallowed


def test_stacked_and_sequential_training_agree(mnist, run):
    images, labels = baseline_set("random", mnist, 5, seed=1)
    stacked = run(images, labels, stacked=True, epochs=20, cutmix_p=0.5)
    sequential = run(images, labels, stacked=False, epochs=20, cutmix_p=0.5)
    # same seeds, same batches and draws: the same networks up to float summation order
    for a, b in zip(stacked.accuracies, sequential.accuracies, strict=True):
        assert a == pytest.approx(b, abs=0.01)
    assert len(set(stacked.accuracies)) > 1  # repeats really differ from each other


def test_stacked_module_matches_individual_networks_at_init(mnist, mnist_protocol):
    images, labels = baseline_set("random", mnist, 2, seed=0)
    protocol = replace(mnist_protocol, epochs=1, repeats=2)
    module = StackedClassifier(
        factory(8), images, labels, protocol=protocol, seed=3, mean=(0.1307,), std=(0.3081,), num_classes=10
    )
    x = torch.randn(2, 5, 1, 28, 28)
    out = module.logits(x)
    for r in range(2):
        torch.manual_seed(derive(3, "repeat", r))
        net = factory(8)()
        torch.testing.assert_close(out[r], net(x[r]), rtol=1e-4, atol=1e-5)


def test_batchnorm_nets_fall_back_to_sequential():
    assert has_batch_norm(create_model("resnet10", channels=1, num_classes=10, size=28))
    assert not has_batch_norm(create_model("convnet", channels=1, num_classes=10, size=28))


def test_bad_paths_and_mismatched_sets_are_clear(mnist, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        load_set(tmp_path / "nowhere.pt", mnist)
    wrong_shape = SyntheticData(torch.rand(4, 3, 32, 32), torch.arange(4), dataset="mnist_5k")
    save_synthetic(tmp_path / "shape.pt", wrong_shape)
    with pytest.raises(SetMismatchError, match=r"\(3, 32, 32\).*\(1, 28, 28\)"):
        load_set(tmp_path / "shape.pt", mnist)
    wrong_classes = SyntheticData(torch.rand(2, 1, 28, 28), torch.tensor([0, 12]), dataset="mnist_5k")
    save_synthetic(tmp_path / "classes.pt", wrong_classes)
    with pytest.raises(SetMismatchError, match="label 12"):
        load_set(tmp_path / "classes.pt", mnist)
    other = SyntheticData(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), dataset="fashion_mnist")
    save_synthetic(tmp_path / "other.pt", other)
    with pytest.raises(SetMismatchError, match="fashion_mnist"):
        load_set(tmp_path / "other.pt", mnist)


def test_model_list_expands_to_one_call():
    assert expand_model_list(["synthetic=x.pt", "model=convnet,resnet10"]) == [
        "synthetic=x.pt",
        "model=convnet",
        "evaluation.models=[convnet,resnet10]",
    ]
    assert expand_model_list(["-m", "model=convnet,resnet10"]) == ["-m", "model=convnet,resnet10"]


def test_evaluate_entry_writes_eval_json_with_baseline(tmp_path, mnist):
    data = SyntheticData(
        baseline_set("random", mnist, 4, seed=3)[0], torch.arange(10).repeat_interleave(4), dataset="mnist_5k"
    )
    save_synthetic(tmp_path / "synthetic.pt", data)
    overrides = [
        f"synthetic={tmp_path}",
        f"out_dir={tmp_path}",
        "model.width=8",
        "repeats=2",
        "evaluation.epochs=3",
        "trainer.accelerator=cpu",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    rows = evaluate(cfg)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert [r["set"] for r in saved] == ["distilled", "random real (ipc 4)"]  # the labels train writes
    assert all(len(r["accuracies"]) == 2 and r["model"] == "convnet" for r in rows)
    assert "3 epochs" in saved[0]["protocol"]


def test_report_states_protocol_and_gain_over_random():
    from dream_pl.evaluation.tables import format_table

    row = {"model": "convnet", "images": 40, "seconds": 3.0, "protocol": "P", "std": 0.5}
    table = format_table(
        [
            {**row, "set": DISTILLED, "mean": 91.4},
            {**row, "set": baseline_label("random", 1), "mean": 61.6},
        ]
    )
    assert "| distilled | convnet | 40 | 91.4 ± 0.5 | 3 |" in table
    assert "distilled vs random real (ipc 1) (convnet): +29.8 points" in table
    assert table.endswith("protocol: P")


def test_stacking_default_follows_the_device():
    from dream_pl.evaluation.protocol import use_stacking

    assert use_stacking(None, "cpu") is False
    assert use_stacking(None, "gpu") is None  # the architecture decides: vmap unless it has batch norm
    assert use_stacking(True, "cpu") is True
