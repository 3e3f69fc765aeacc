"""Nothing chosen on the test set: the held-out validation split, ``evaluation.lr=auto``, and how a chosen
number is labelled; tiny trainings on mnist_5k (width-4 ConvNet)."""

import json

import pytest
import torch

from dream_pl.config import (
    ConfigError,
    composition_error,
    protocol_from,
    validate,
    validate_eval,
    validate_evaluation,
)
from dream_pl.data import RealSet, load_dataset
from dream_pl.evaluation import suite
from dream_pl.evaluation.protocol import EvalResult
from dream_pl.evaluation.selection import pick_lr, search_lr, selection_note
from dream_pl.evaluation.sets import DISTILLED, SetMismatchError, baseline_set, held_out, validation_set
from dream_pl.evaluation.tables import csv_text, format_table
from dream_pl.synthetic import SyntheticData, save_synthetic
from dream_pl.workflow import evaluate


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist_5k")


def test_pick_lr_takes_the_best_validation_accuracy_and_a_tie_goes_to_the_smaller_lr():
    assert pick_lr({0.01: 80.0, 0.03: 82.5, 0.1: 81.0}) == 0.03
    assert pick_lr({0.1: 82.5, 0.03: 82.5, 0.01: 80.0}) == 0.03  # tie between 0.03 and 0.1
    with pytest.raises(ValueError, match="no learning rate"):
        pick_lr({})


def test_the_validation_split_is_stratified_seeded_and_inside_each_class(mnist):
    rs = RealSet.from_data(mnist, "train")
    split = held_out(rs, 25, seed=0)
    assert [len(idx) for idx in split] == [25] * 10
    for c, idx in enumerate(split):
        assert len(set(idx.tolist())) == 25
        assert int(idx.max()) < rs.class_sizes[c]
    assert all(torch.equal(a, b) for a, b in zip(split, held_out(rs, 25, seed=0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(split, held_out(rs, 25, seed=1), strict=True))
    images, labels = validation_set(mnist, 25, seed=0)
    assert images.dtype == torch.uint8
    assert images.shape == (250, 1, 28, 28)
    assert torch.equal(labels, torch.arange(10).repeat_interleave(25))
    assert torch.equal(images[25:50], rs.images[rs.class_slice(1)][split[1]])
    with pytest.raises(SetMismatchError, match=r"validation_per_class=400 .* allowed: 1 \.\. 399"):
        held_out(rs, 400, seed=0)


def test_baselines_draw_from_what_the_split_leaves(mnist):
    rs = RealSet.from_data(mnist, "train")
    split = held_out(rs, 300, seed=0)  # 300 of each class's 400 images
    images, labels = baseline_set("random", mnist, 50, seed=0, exclude=split)
    pixels = {c: rs.images[rs.class_slice(c)] for c in range(10)}
    for c in range(10):
        held = (pixels[c][split[c]].float() / 255).flatten(1)
        picked = images[labels == c].flatten(1)
        assert len(picked) == 50
        assert torch.cdist(picked, held).min() > 0  # none of the picks is a held-out image
    with pytest.raises(SetMismatchError, match=r"needs 200 images of class 0, but 100 are left"):
        baseline_set("random", mnist, 200, seed=0, exclude=split)
    unchanged = baseline_set("random", mnist, 5, seed=0)
    assert torch.equal(unchanged[0], baseline_set("random", mnist, 5, seed=0, exclude=None)[0])
    whole, whole_labels = baseline_set("whole", mnist, 0, exclude=split)
    assert whole.dtype == torch.uint8
    assert len(whole) == len(rs) - 3000
    assert torch.equal(torch.bincount(whole_labels), torch.tensor(rs.class_sizes) - 300)


def test_search_lr_trains_each_candidate_on_the_validation_split_never_the_test_set(mnist_protocol):
    validation = (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.arange(4))
    calls = []

    def train(images, labels, *, protocol, test, on_epoch):
        calls.append((protocol.lr, protocol.repeats, test))
        accuracy = {0.01: 0.5, 0.03: 0.7, 0.1: 0.6}[protocol.lr]
        return EvalResult("convnet", [accuracy] * protocol.repeats, 0.0, "", len(labels))

    lr, scores = search_lr(
        train, torch.rand(10, 1, 28, 28), torch.arange(10), mnist_protocol, grid=[0.01, 0.03, 0.1], repeats=2,
        validation=validation,
    )  # fmt: skip
    assert lr == 0.03
    assert scores == pytest.approx({0.01: 50.0, 0.03: 70.0, 0.1: 60.0})
    assert [(c[0], c[1]) for c in calls] == [(0.01, 2), (0.03, 2), (0.1, 2)]
    assert all(c[2] is validation for c in calls)
    note = selection_note(lr, scores, 100)
    assert "lr 0.03 chosen on a validation split of 100 training images per class" in note
    assert "never the test set" in note
    assert "0.1: 60.0" in note


def test_lr_auto_reads_the_test_set_once_and_labels_the_choice(tmp_path, mnist, compose_eval, monkeypatch):
    data = SyntheticData(baseline_set("random", mnist, 1, seed=3)[0], torch.arange(10), dataset="mnist_5k")
    save_synthetic(tmp_path / "synthetic.pt", data)
    cfg = compose_eval(
        [
            f"synthetic={tmp_path}",
            f"out_dir={tmp_path / 'out'}",
            f"data_dir={tmp_path / 'data'}",
            "model.width=4",
            "repeats=1",
            "evaluation.epochs=2",
            "evaluation.lr=auto",
            "evaluation.lr_grid=[0.01,0.05]",
            "evaluation.validation_per_class=20",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
        ]
    )
    assert protocol_from(cfg.evaluation).lr is None
    seen = []
    real_evaluate_set = suite.evaluate_set

    def recording(factory, images, labels, test, **kwargs):
        seen.append((len(test[1]), kwargs["protocol"].lr))
        return real_evaluate_set(factory, images, labels, test, **kwargs)

    monkeypatch.setattr(suite, "evaluate_set", recording)
    rows = evaluate(cfg)
    test_size = len(mnist.test_labels)
    # per set (distilled, random real): two candidates on 200 validation images, then one run on the test set
    assert [n for n, _ in seen] == [200, 200, test_size] * 2
    assert [lr for _, lr in seen[:2]] == [0.01, 0.05]
    assert seen[2][1] in (0.01, 0.05)
    distilled = next(r for r in rows if r["set"] == DISTILLED)
    assert distilled["lr"] == pick_lr(distilled["lr_search"])
    assert set(distilled["lr_search"]) == {0.01, 0.05}
    assert "SGD lr auto" in distilled["protocol"]
    assert "chosen on a validation split of 20 training images per class" in distilled["selected"]
    stored = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert stored[0]["selected"] == distilled["selected"]
    assert f"{DISTILLED} (convnet): lr " in format_table(rows)
    header, first = csv_text(rows).splitlines()[:2]
    assert "lr" in header.split(",")
    assert first.split(",")[header.split(",").index("lr")] == str(distilled["lr"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evaluation.lr=fast", "evaluation.lr='fast' must be a finite number > 0 or 'auto'"),
        ("evaluation.lr_grid=[]", "evaluation.lr_grid=[] must be a non-empty list of lrs > 0"),
        ("evaluation.lr_grid=[0.01,-1]", "evaluation.lr_grid=[0.01, -1.0] must be a non-empty list"),
        ("evaluation.validation_per_class=0", "evaluation.validation_per_class=0 must be an integer >= 1"),
        ("evaluation.lr_search_repeats=0", "evaluation.lr_search_repeats=0 must be an integer >= 1"),
    ],
)
def test_bad_selection_settings_are_refused_in_one_line(compose_eval, override, message):
    cfg = compose_eval(["synthetic=x.pt", override])
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_evaluation(cfg.evaluation)


def test_the_whole_protocol_takes_no_auto(compose_eval):
    """Its lr is typed a float: the schema refuses ``auto`` while composing, in one line."""
    with pytest.raises(Exception) as raised:  # noqa: PT011 - Hydra's ConfigCompositionException
        compose_eval(["synthetic=x.pt", "evaluation.whole_protocol.lr=auto"])
    message = str(composition_error(raised.value))
    assert "\n" not in message
    assert "evaluation.whole_protocol.lr=auto" in message


def test_a_split_too_large_for_the_smallest_class_is_refused_before_the_data_loads(
    compose_train, compose_eval
):
    auto = ["evaluation.lr=auto", "evaluation.validation_per_class=400"]
    with pytest.raises(ConfigError, match=r"validation_per_class=400 is too large: .* allowed: 1\.\.399"):
        validate(compose_train(["ipc=1", *auto]))
    with pytest.raises(ConfigError, match=r"validation_per_class=400 is too large: .* allowed: 1\.\.390"):
        validate_eval(compose_eval(["synthetic=random", "ipc=10", *auto]))
    validate(compose_train(["ipc=1", "evaluation.validation_per_class=400"]))  # lr fixed: no split is made
