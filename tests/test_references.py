"""Scores relative to random real images and to the whole set: IOR, HLR, LRS by hand, the cached whole-set
reference, "not measured", eval.csv, the cross-run table; tiny trainings on mnist_5k (width-4 ConvNet)."""

import csv
import io
import json
import math
import sys
from dataclasses import replace

import pytest
import pytorch_lightning as pl
import torch
import yaml
from omegaconf import OmegaConf

from dream_pl.config import ConfigError, protocol_from, validate_evaluation
from dream_pl.data import load_dataset
from dream_pl.evaluation.references import (
    content_digest,
    fingerprint,
    fingerprint_inputs,
    read_reference,
    reference_path,
    whole_references,
)
from dream_pl.evaluation.scores import (
    NOT_MEASURED,
    UNDEFINED,
    hard_label_recovery,
    improvement_over_random,
    label_robust_score,
    relative_scores,
    score_rows,
    share_of_gap,
)
from dream_pl.evaluation.sets import DISTILLED, WHOLE, baseline_label, baseline_set
from dream_pl.evaluation.stacked import StackedClassifier
from dream_pl.evaluation.tables import CSV_COLUMNS, csv_text, format_table
from dream_pl.models import create_model
from dream_pl.quiet import quiet_lightning
from dream_pl.report import main as report_main
from dream_pl.report import table
from dream_pl.synthetic import SyntheticData, save_synthetic
from dream_pl.workflow import evaluate, train

RANDOM = baseline_label("random", 10)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist_5k")


@pytest.fixture(scope="module")
def few(mnist):
    """300 of mnist_5k's training images, 30 per class (its training split is sorted by class)."""
    keep = torch.cat([torch.nonzero(mnist.train_labels == c).flatten()[:30] for c in range(10)])
    return replace(mnist, train_images=mnist.train_images[keep], train_labels=mnist.train_labels[keep])


# --- the scores, by hand ------------------------------------------------------------------------


def test_ior_hlr_and_their_shares_of_the_gap_by_hand():
    # a set at 60 %, random real images at 40 %, the whole set at 90 %: a gap of 50 points
    assert improvement_over_random(60.0, 40.0) == 20.0
    assert hard_label_recovery(60.0, 90.0) == 30.0
    assert share_of_gap(20.0, 40.0, 90.0) == pytest.approx(0.4)
    assert share_of_gap(30.0, 40.0, 90.0) == pytest.approx(0.6)
    assert share_of_gap(5.0, 50.0, 50.0) is None  # no gap: no fraction of it
    assert share_of_gap(5.0, 60.0, 50.0) is None  # a whole set below random images: a broken reference


def test_label_robust_score_on_fractions_by_hand():
    # IOR 0.2, HLR 0.3 (fractions): alpha = 0.5 * 0.2 - 0.5 * 0.3 = -0.05
    # LRS = (e^-0.05 - e^-1) / (e - e^-1) = (0.951229 - 0.367879) / 2.350402 = 0.248192
    assert label_robust_score(0.2, 0.3) == pytest.approx(0.248192, abs=1e-6)
    assert label_robust_score(0.0, 0.0) == pytest.approx(0.268941, abs=1e-6)  # (1 - e^-1) / (e - e^-1)
    assert label_robust_score(1.0, -1.0) == pytest.approx(1.0)  # alpha = 1: the top of [0, 1]
    assert label_robust_score(-1.0, 1.0) == pytest.approx(0.0)  # alpha = -1: the bottom
    assert label_robust_score(0.2, 0.3, weight=1.0) == pytest.approx(
        (math.exp(0.2) - math.exp(-1)) / (math.e - math.exp(-1))
    )
    # DD-Ranking 0.2.0's percent values in the exponent (alpha = -5) leave [0, 1]: not what is computed here
    assert label_robust_score(20.0, 30.0) == pytest.approx(-0.153651, abs=1e-6)


def test_relative_scores_take_percent_and_say_what_was_not_measured():
    scores = relative_scores(60.0, 40.0, 90.0)
    assert scores == pytest.approx(
        {
            "random_mean": 40.0,
            "whole_mean": 90.0,
            "ior": 20.0,
            "hlr": 30.0,
            "ior_of_gap": 0.4,
            "hlr_of_gap": 0.6,
            "lrs": 0.248192,
        },
        abs=1e-6,
    )
    no_whole = relative_scores(60.0, 40.0, None)
    assert no_whole["ior"] == 20.0
    assert [no_whole[k] for k in ("whole_mean", "hlr", "ior_of_gap", "hlr_of_gap", "lrs")] == [
        NOT_MEASURED
    ] * 5
    no_random = relative_scores(60.0, None, 90.0)
    assert no_random["hlr"] == 30.0
    assert [no_random[k] for k in ("random_mean", "ior", "ior_of_gap", "lrs")] == [NOT_MEASURED] * 4
    flat = relative_scores(50.0, 50.0, 50.0)
    assert (flat["ior_of_gap"], flat["hlr_of_gap"]) == (UNDEFINED, UNDEFINED)
    assert flat["lrs"] == pytest.approx(0.268941, abs=1e-6)


def test_score_rows_scores_every_set_against_its_own_architectures_references():
    rows = [
        {"set": DISTILLED, "model": "convnet", "mean": 60.0},
        {"set": RANDOM, "model": "convnet", "mean": 40.0},
        {"set": WHOLE, "model": "convnet", "mean": 90.0},
        {"set": DISTILLED, "model": "resnet10", "mean": 50.0},
        {"set": RANDOM, "model": "resnet10", "mean": 45.0},
    ]
    scored = score_rows(rows)
    assert scored[1] == rows[1]
    assert scored[2] == rows[2]
    assert (scored[0]["ior"], scored[0]["hlr"]) == (20.0, 30.0)
    assert scored[3]["ior"] == 5.0
    assert scored[3]["hlr"] == NOT_MEASURED  # resnet10 has no whole-set reference: not convnet's


# --- the whole-set reference and its cache ------------------------------------------------------


def whole_protocol(cfg):
    return protocol_from(cfg.evaluation, whole=True)


def references(cfg, real):
    return whole_references(cfg, real, whole_protocol(cfg))


def reference_config(compose_eval, data_dir, *extra):
    return compose_eval(
        [
            "synthetic=x.pt",
            "model.width=4",
            f"data_dir={data_dir}",
            "evaluation.whole_protocol.epochs=2",
            "evaluation.whole_protocol.repeats=1",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            *extra,
        ]
    )


def test_the_whole_set_reference_is_trained_once_cached_and_then_read(
    compose_eval, few, tmp_path, monkeypatch
):
    cfg = reference_config(compose_eval, tmp_path, "evaluation.whole=true")
    assert references(reference_config(compose_eval, tmp_path), few) == []  # whole=false, no cache
    [trained] = references(cfg, few)
    path = reference_path(cfg, fingerprint_inputs(cfg, "convnet", whole_protocol(cfg)))
    assert path.parent == tmp_path / "references"
    assert path.name.startswith("mnist_5k-convnet-")
    assert path.suffix == ".json"
    record = json.loads(path.read_text())
    assert record["inputs"] == {
        "dataset": {"name": "mnist_5k", "options": {}},
        "model": {"name": "convnet", "width": 4, "depth": 3, "norm": "instance"},
        "protocol": {
            "epochs": 2,
            "repeats": 1,
            "batch_size": 256,
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 0.0005,
            "lr_milestones": [0.6666667, 0.8333333],
            "lr_gamma": 0.2,
            "dsa": "color_crop_scale_rotate",  # the dataset's evaluation DSA, resolved
            "cutmix_p": 0.0,
        },
        "seed": 0,
    }
    assert record["fingerprint"] == path.stem
    assert len(record["accuracies"]) == 1
    assert 0 <= record["accuracies"][0] <= 1
    assert record["mean"] == pytest.approx(100 * record["accuracies"][0])
    assert record["images"] == 300
    assert record["seconds"] > 0
    assert "2 epochs" in record["protocol"]
    assert "batch 256" in record["protocol"]
    assert trained["set"] == WHOLE
    assert trained["extra"]["cached"] is False
    assert trained["extra"]["reference"] == str(path)

    def never(*args, **kwargs):
        raise AssertionError("the cached reference was trained again")

    monkeypatch.setattr("dream_pl.evaluation.suite.evaluate_set", never)
    for whole in ("true", "false"):  # a cache is read whatever evaluation.whole says
        [cached] = references(reference_config(compose_eval, tmp_path, f"evaluation.whole={whole}"), few)
        assert cached["extra"]["cached"] is True
        assert cached["accuracies"] == record["accuracies"]
        assert cached["mean"] == record["mean"]
    other_seed = reference_config(compose_eval, tmp_path, "seed=1")
    assert references(other_seed, few) == []  # another fingerprint: not measured


def test_the_fingerprint_follows_what_the_accuracy_depends_on(compose_eval, tmp_path):
    def key(*extra):
        cfg = reference_config(compose_eval, tmp_path, *extra)
        return fingerprint(fingerprint_inputs(cfg, "convnet", whole_protocol(cfg)))

    base = key()
    assert key() == base  # stable across compositions
    for execution in ("evaluation.compile=off", "evaluation.stacked=true", "evaluation.test_batch=100"):
        assert key(execution) == base, execution  # how it runs does not define it
    for changed in (
        "model.width=8",
        "evaluation.whole_protocol.epochs=3",
        "evaluation.whole_protocol.lr=0.02",
        "evaluation.lr_milestones=[0.5]",  # interpolated into the whole protocol
        "seed=1",
        "dataset=mnist",
    ):
        assert key(changed) != base, changed
    assert key("evaluation.epochs=7") == base  # the set protocol is not the whole set's
    cfg = reference_config(compose_eval, tmp_path)
    other = fingerprint_inputs(cfg, "resnet10", whole_protocol(cfg))
    assert other["model"] == {"name": "resnet10"}  # built with its defaults


def test_a_folder_datasets_reference_follows_its_files_not_only_its_options(compose_eval, tmp_path, few):
    """Same root and options, one pixel changed: another fingerprint (the digest is of the images)."""
    cfg = reference_config(compose_eval, tmp_path)
    changed = replace(few, train_images=few.train_images.clone())
    changed.train_images[0, 0, 0, 0] += 1
    digests = [content_digest(d) for d in (few, changed)]
    assert digests[0] == content_digest(few)
    assert digests[0] != digests[1]
    keys = [fingerprint(fingerprint_inputs(cfg, "convnet", whole_protocol(cfg), d)) for d in digests]
    assert keys[0] != keys[1]
    assert fingerprint_inputs(cfg, "convnet", whole_protocol(cfg))["dataset"].keys() == {"name", "options"}


def test_a_damaged_or_foreign_cache_file_is_ignored(compose_eval, tmp_path, few):
    cfg = reference_config(compose_eval, tmp_path)
    inputs = fingerprint_inputs(cfg, "convnet", whole_protocol(cfg))
    path = reference_path(cfg, inputs)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert read_reference(path, inputs) is None
    path.write_text(json.dumps({"inputs": {**inputs, "seed": 5}, "accuracies": [0.9], "mean": 90.0}))
    assert read_reference(path, inputs) is None
    assert references(cfg, few) == []


def test_8_bit_images_train_exactly_as_their_float_pixels(few, mnist_protocol):
    """The whole set is evaluated from the dataset's uint8 images, converted per batch: the same numbers."""
    images, labels = baseline_set("whole", few, 0)
    assert images.dtype == torch.uint8
    assert images.data_ptr() == few.train_images.data_ptr()
    protocol = replace(mnist_protocol, epochs=1, repeats=1, batch_size=64, cutmix_p=0.0)
    spec = few.spec
    accuracies = []
    for pixels in (images, images.float() / 255):
        module = StackedClassifier(
            lambda: create_model("convnet", channels=1, num_classes=10, size=28, width=4),
            pixels,
            labels,
            protocol=protocol,
            seed=0,
            mean=spec.mean,
            std=spec.std,
            num_classes=10,
            stacked=False,
        )
        assert module.images.dtype == pixels.dtype
        with quiet_lightning():
            trainer = pl.Trainer(
                accelerator="cpu",
                max_epochs=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.fit(module)
            test = torch.utils.data.TensorDataset(few.test_images[:200], few.test_labels[:200])
            trainer.test(module, torch.utils.data.DataLoader(test, batch_size=100), verbose=False)
        accuracies.append(module.accuracies())
    assert accuracies[0] == accuracies[1]


# --- eval.json, eval.csv and the printed table --------------------------------------------------


def read_csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_evaluate_scores_the_set_and_says_not_measured_until_a_reference_exists(
    tmp_path, mnist, capsys, compose_eval
):
    data = SyntheticData(baseline_set("random", mnist, 1, seed=3)[0], torch.arange(10), dataset="mnist_5k")
    save_synthetic(tmp_path / "synthetic.pt", data)

    def run(out, *extra):
        cfg = compose_eval(
            [
                f"synthetic={tmp_path}",
                f"out_dir={tmp_path / out}",
                f"data_dir={tmp_path / 'data'}",
                "model.width=4",
                "repeats=1",
                "evaluation.epochs=2",
                "evaluation.whole_protocol.epochs=1",
                "evaluation.whole_protocol.repeats=1",
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
                *extra,
            ]
        )
        evaluate(cfg)
        return json.loads((tmp_path / out / "eval.json").read_text()), read_csv(tmp_path / out / "eval.csv")

    rows, cells = run("absent")
    printed = capsys.readouterr().out
    assert [r["set"] for r in rows] == [DISTILLED, "random real (ipc 1)"]
    distilled, random = rows
    assert distilled["ior"] == pytest.approx(distilled["mean"] - random["mean"])
    for key in ("whole_mean", "hlr", "ior_of_gap", "hlr_of_gap", "lrs"):
        assert distilled[key] == NOT_MEASURED, key
    assert "ior" not in random  # the reference itself is not scored
    assert (distilled["ipc"], random["ipc"], distilled["dataset"]) == (1, 1, "mnist_5k")
    assert (distilled["epochs"], distilled["repeats"]) == (2, 1)
    assert distilled["eval_seconds"] > 0
    assert "distill_seconds" not in distilled
    assert f"{WHOLE} (convnet): {NOT_MEASURED}" in printed
    assert "| distilled | convnet | " in printed
    assert f" | {NOT_MEASURED} | {NOT_MEASURED} |" in printed
    assert list(cells[0]) == list(CSV_COLUMNS)
    assert (cells[0]["set"], cells[0]["ipc"], cells[0]["repeats"], cells[0]["epochs"]) == (
        DISTILLED,
        "1",
        "1",
        "2",
    )
    assert float(cells[0]["ior"]) == pytest.approx(distilled["ior"], abs=1e-5)
    assert cells[0]["hlr"] == cells[0]["lrs"] == cells[0]["whole_mean"] == ""  # not measured: empty, not 0
    assert cells[1]["ior"] == ""

    rows, cells = run("measured", "evaluation.whole=true")  # mnist_5k's 4,000 training images, 1 epoch
    printed = capsys.readouterr().out
    assert [r["set"] for r in rows] == [DISTILLED, "random real (ipc 1)", WHOLE]
    distilled, random, whole = rows
    assert whole["images"] == 4000
    assert whole["extra"]["cached"] is False
    assert whole["ipc"] is None
    assert distilled["hlr"] == pytest.approx(whole["mean"] - distilled["mean"])
    gap = whole["mean"] - random["mean"]
    if gap > 0:
        assert distilled["ior_of_gap"] + distilled["hlr_of_gap"] == pytest.approx(1.0)
    assert 0 <= distilled["lrs"] <= 1
    assert f"{WHOLE} (convnet): {whole['mean']:.1f}" in printed
    assert "measured now" in printed
    assert [c["set"] for c in cells] == [DISTILLED, "random real (ipc 1)", WHOLE]
    assert cells[2]["ipc"] == ""
    assert cells[2]["images"] == "4000"
    assert float(cells[0]["hlr"]) == pytest.approx(distilled["hlr"], abs=1e-5)

    rows, _ = run("cached")  # whole=false: the cache is read, nothing retrains
    assert rows[2]["extra"]["cached"] is True
    assert rows[2]["accuracies"] == whole["accuracies"]


def test_csv_cells_missing_values_are_empty_and_zeros_stay_zeros():
    rows = [
        {
            "set": DISTILLED,
            "model": "convnet",
            "ipc": 10,
            "mean": 60.0,
            "std": 0.0,
            "accuracies": [0.6],
            "ior": 0.0,
            "hlr": NOT_MEASURED,
            "lrs": NOT_MEASURED,
            "images": 100,
            "seconds": 1.5,
            "protocol": "P, with a comma",
        }
    ]
    [cells] = list(csv.DictReader(io.StringIO(csv_text(rows))))
    assert cells["ior"] == "0.0"
    assert cells["acc_std"] == "0.0"
    assert cells["hlr"] == cells["lrs"] == cells["epochs"] == cells["whole_mean"] == ""
    assert (cells["repeats"], cells["protocol"], cells["acc_mean"]) == ("1", "P, with a comma", "60.0")


def test_the_printed_table_leaves_unscored_rows_as_they_were():
    row = {"model": "convnet", "images": 40, "seconds": 3.0, "protocol": "P", "std": 0.5}
    plain = format_table([{**row, "set": DISTILLED, "mean": 91.4}])
    assert "IOR" not in plain
    assert plain.endswith("protocol: P")


# --- a training run records its wall-clock -------------------------------------------------------


def test_a_training_run_records_distillation_and_evaluation_seconds(tmp_path, tiny_cfg, capsys):
    cfg = tiny_cfg(
        tmp_path,
        "sampler=random",
        "evaluation.enabled=true",
        "evaluation.epochs=1",
        "evaluation.repeats=1",
        "evaluation.baseline=false",
        f"data_dir={tmp_path / 'data'}",
    )
    train(cfg)
    [row] = json.loads((tmp_path / "eval.json").read_text())
    assert row["set"] == DISTILLED
    assert row["ipc"] == 1
    assert row["dataset"] == "mnist_5k"
    assert row["distill_seconds"] > 0
    assert row["eval_seconds"] > 0
    assert row["ior"] == row["hlr"] == NOT_MEASURED  # neither reference: no random images, no whole set
    assert (tmp_path / "eval.csv").is_file()


# --- the cross-run table -------------------------------------------------------------------------


def fake_run(folder, config, rows):
    """A run folder as an entry point leaves it: Hydra's composed config and eval.json."""
    if config is not None:
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps(rows))


def test_the_cross_run_table_puts_every_run_side_by_side(tmp_path, capsys, monkeypatch):
    common = {"model": "convnet", "std": 0.5, "dataset": "mnist_5k"}
    timing = {"distill_seconds": 100.0, "eval_seconds": 20.0}
    fake_run(
        tmp_path / "idc",
        {"distill": {"method": "idc"}, "dataset": {"name": "mnist_5k"}, "ipc": 10},
        [
            {**common, **timing, "set": DISTILLED, "mean": 80.0, "ipc": 10},
            {**common, **timing, "set": RANDOM, "mean": 60.0, "ipc": 10},
            {**common, **timing, "set": WHOLE, "mean": 99.0, "ipc": None},
        ],
    )
    fake_run(
        tmp_path / "sweep" / "0",
        {"distill": {"method": "dm"}, "dataset": {"name": "mnist_5k"}, "ipc": 10},
        [
            {**common, **timing, "set": DISTILLED, "mean": 70.0, "ipc": 10},
            {**common, **timing, "set": RANDOM, "mean": 60.0, "ipc": 10},
        ],
    )
    fake_run(
        tmp_path / "foreign",
        {"format": "dc", "dataset": {"name": "cifar10"}, "ipc": 10},
        [{**common, "dataset": "cifar10", "set": DISTILLED, "mean": 44.0, "ipc": 1, "eval_seconds": 9.0}],
    )
    fake_run(tmp_path / "old", None, [{"set": DISTILLED, "model": "convnet", "mean": 50.0}])  # no config
    text = table(tmp_path)
    assert (tmp_path / "runs.md").read_text() == text
    assert "4 runs." in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| run | method | dataset | model | IPC | top-1 (%) | IOR | HLR | wall-clock (s) |"
    assert lines[1:] == [
        "| foreign | dc | cifar10 | convnet | 1 | 44.0 ± 0.5 | not measured | not measured "
        "| 9 (evaluation only) |",
        "| sweep/0 | dm | mnist_5k | convnet | 10 | 70.0 ± 0.5 | +10.0 | not measured | 120 (100 + 20) |",
        "| idc | idc | mnist_5k | convnet | 10 | 80.0 ± 0.5 | +20.0 | +19.0 | 120 (100 + 20) |",
        "| old | unknown | unknown | convnet | not recorded | 50.0 ± 0.0 | not measured | not measured "
        "| not recorded |",
    ]
    monkeypatch.setattr(sys, "argv", ["dream_pl.report", "--table", str(tmp_path)])
    report_main()
    assert "| idc | idc | mnist_5k |" in capsys.readouterr().out


def test_the_cross_run_table_of_a_folder_without_runs_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs"):
        table(tmp_path)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "names"),
    [
        ("whole", "1", ["evaluation.whole=1", "true or false"]),
        ("whole_protocol.epochs", "0", ["evaluation.whole_protocol.epochs=0", ">= 1"]),
        ("whole_protocol.repeats", "1.5", ["evaluation.whole_protocol.repeats=1.5", "integer"]),
        ("whole_protocol.batch_size", "-4", ["evaluation.whole_protocol.batch_size=-4"]),
        ("whole_protocol.lr", "0", ["evaluation.whole_protocol.lr=0", "> 0"]),
        ("whole_protocol.momentum", "-0.1", ["evaluation.whole_protocol.momentum=-0.1", ">= 0"]),
        ("whole_protocol.cutmix_p", "1.5", ["evaluation.whole_protocol.cutmix_p=1.5", "[0, 1]"]),
        ("whole_protocol.lr_milestones", "[1.5]", ["evaluation.whole_protocol.lr_milestones", "[0, 1]"]),
        ("whole_protocol.dsa", "bogus", ["evaluation.whole_protocol.dsa='bogus'"]),
    ],
)
def test_a_bad_whole_setting_is_one_line_naming_it(compose_train, key, value, names):
    """Checked without the schema (a preset merged as plain values): the check itself refuses them."""
    plain = OmegaConf.create(OmegaConf.to_container(compose_train([]).evaluation, resolve=True))
    OmegaConf.update(plain, key, yaml.safe_load(value))
    with pytest.raises(ConfigError) as err:
        validate_evaluation(plain)
    assert "\n" not in str(err.value)
    for name in names:
        assert name in str(err.value)


def test_the_schema_refuses_a_whole_that_is_not_a_bool_while_composing(compose_train):
    with pytest.raises(Exception, match=r"evaluation\.whole") as raised:
        compose_train(["evaluation.whole=maybe"])
    assert "not a valid bool" in str(raised.value.__cause__)


def test_the_whole_protocol_follows_the_set_protocols_decay_and_augmentation(compose_train):
    cfg = compose_train(["dataset=cifar10", "evaluation.lr_gamma=0.1"])
    whole = protocol_from(cfg.evaluation, whole=True)
    assert (whole.epochs, whole.batch_size, whole.lr, whole.momentum, whole.weight_decay) == (
        50,
        256,
        0.01,
        0.9,
        5e-4,
    )
    assert whole.milestones() == (33, 41)
    assert whole.lr_gamma == 0.1
    assert (whole.dsa, whole.cutmix_p) == (cfg.evaluation.dsa, cfg.evaluation.cutmix_p)
