"""dataset=folder: your own ImageFolder-style tree, read from real MNIST digits written as PNG and JPEG files.

PNG files at the native size must read back bit for bit, in the sorted order of the class folders; other
sizes are resized and centre-cropped; a prepared copy reads back the same tensors and is never stale; every
bad tree or image is refused in one line naming the path, by the config's pre-check where no image needs
decoding, else when the data loads.
"""

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import Commands, assert_one_line_error, refusals
from omegaconf import OmegaConf
from PIL import Image

from dream_pl.config import GROUPS, ConfigError, validate, validate_eval
from dream_pl.data import get_spec, load_dataset
from dream_pl.data.folder import FolderDatasetError
from dream_pl.data.prepare import main as prepare_main
from dream_pl.data.sources import prepare_dataset
from dream_pl.data.specs import spec_for
from dream_pl.synthetic import load_synthetic

CLASSES = {"three": 3, "seven": 7, "one": 1}  # written in this order; labelled in sorted order
SORTED = ["one", "seven", "three"]
TRAIN, TEST = 6, 3  # images per class in train/ and in the test split
FITS = ("ipc=1", "sampler=random", "distill.batch_real=4")  # 1 x 2^2 = 4 real images per class: fits 6
DIGITS = {}  # digit -> (train, test) uint8 [n, 1, 28, 28], filled once by the module fixture


@pytest.fixture(scope="module", autouse=True)
def digits():
    mnist = load_dataset("mnist_5k")
    for digit in CLASSES.values():
        DIGITS[digit] = (
            mnist.train_images[mnist.train_labels == digit][:TRAIN],
            mnist.test_images[mnist.test_labels == digit][:TEST],
        )


def save(folder: Path, images: torch.Tensor, suffix: str = ".png", **kwargs: object) -> None:
    """uint8 [n, C, H, W] images as files 0<suffix>, 1<suffix>, ... (C = 1: greyscale "L"; 3: "RGB")."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        array = x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"{i}{suffix}", **kwargs)


def tree(root: Path, split: str = "val", transform: Callable = lambda x: x, suffix: str = ".png") -> Path:
    """root/train/<class>/ (6 digits) and root/<split>/<class>/ (3 digits) for one, seven and three."""
    for name, digit in CLASSES.items():
        train, test = DIGITS[digit]
        save(root / "train" / name, transform(train), suffix)
        save(root / split / name, transform(test), suffix)
    return root


def expected(part: int) -> torch.Tensor:
    """The digits of one split (0: train, 1: test) in the sorted class order."""
    return torch.cat([DIGITS[CLASSES[name]][part] for name in SORTED])


def colour(x: torch.Tensor) -> torch.Tensor:
    """A colour variant of grey digits: three different channels stacked."""
    return torch.cat([x, 255 - x, x // 2], dim=1)


# --- reading ----------------------------------------------------------------------------------


def test_png_files_read_back_exactly_in_the_sorted_class_order(tmp_path):
    root = tree(tmp_path / "digits")
    (root / "train" / "one" / "notes.txt").write_text("not an image: ignored")
    (root / "train" / "one" / ".hidden.png").write_text("hidden: ignored")
    (root / "train" / ".ipynb_checkpoints").mkdir()  # a hidden folder is no class
    data = load_dataset("folder", root=str(root), size=28, channels=1)
    assert (data.spec.name, data.spec.channels, data.spec.size, data.spec.num_classes) == ("folder", 1, 28, 3)
    assert data.spec.smallest_class == TRAIN
    assert data.train_images.shape == (3 * TRAIN, 1, 28, 28)
    assert data.train_images.dtype == torch.uint8
    assert data.train_labels.tolist() == [0] * TRAIN + [1] * TRAIN + [2] * TRAIN  # one, seven, three
    assert data.test_labels.tolist() == [0] * TEST + [1] * TEST + [2] * TEST
    assert torch.equal(data.train_images, expected(0))
    assert torch.equal(data.test_images, expected(1))
    assert data.source == str(root)


def test_mean_and_std_are_measured_per_channel_from_the_training_images(tmp_path):
    data = load_dataset("folder", root=str(tree(tmp_path / "d", transform=colour)), size=28)
    pixels = data.train_images.double() / 255
    assert data.spec.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), rel=1e-12)
    assert data.spec.std == pytest.approx(pixels.std(dim=(0, 2, 3), unbiased=False).tolist(), rel=1e-12)
    assert len(set(data.spec.mean)) == 3  # three different channels, three numbers


def test_grey_images_fill_three_channels_by_default_and_colour_images_keep_theirs(tmp_path, caplog):
    grey = tree(tmp_path / "grey")
    with caplog.at_level("INFO", logger="dream_pl.data"):
        data = load_dataset("folder", root=str(grey), size=28)  # channels: 3 by default
    assert torch.equal(data.train_images, expected(0).expand(-1, 3, -1, -1))
    assert "every image is greyscale; dataset.options.channels=1" in caplog.text
    rgb = tree(tmp_path / "rgb", transform=colour)
    caplog.clear()
    with caplog.at_level("INFO", logger="dream_pl.data"):
        data = load_dataset("folder", root=str(rgb), size=28, channels=3)
    assert torch.equal(data.train_images, colour(expected(0)))
    assert "greyscale" not in caplog.text
    as_grey = load_dataset("folder", root=str(rgb), size=28, channels=1).train_images
    luminance = [
        np.asarray(Image.fromarray(x.permute(1, 2, 0).numpy()).convert("L")) for x in colour(expected(0))
    ]
    assert torch.equal(as_grey, torch.from_numpy(np.stack(luminance))[:, None])  # PIL's "L" conversion


def test_jpeg_files_and_other_sizes_are_resized_and_centre_cropped(tmp_path):
    root = tree(tmp_path / "jpeg", suffix=".jpg")
    data = load_dataset("folder", root=str(root), size=28, channels=1)
    error = (data.train_images.float() - expected(0).float()).abs().mean()
    assert 0 < error < 4  # lossy, but the same digits (mean error in grey levels of 255)
    wide = root / "train" / "one" / "wide.png"  # 28 high, 40 wide: the centre crop is the digit itself
    digit = DIGITS[1][0][0, 0].numpy()
    Image.fromarray(np.pad(digit, ((0, 0), (6, 6)))).save(wide)
    big = root / "train" / "one" / "big.PNG"  # 56 x 56, any case of suffix: resized back to 28
    Image.fromarray(digit).resize((56, 56), Image.NEAREST).save(big)
    data = load_dataset("folder", root=str(root), size=28, channels=1)
    ones = data.train_images[data.train_labels == 0]
    assert len(ones) == TRAIN + 2  # files sorted by name: 0.jpg .. 5.jpg, big.PNG, wide.png
    assert torch.equal(ones[-1, 0], torch.from_numpy(digit))
    assert (ones[-2, 0].float() - torch.from_numpy(digit).float()).abs().mean() < 20
    small = load_dataset("folder", root=str(root), size=12, channels=1)
    assert small.train_images.shape == (3 * TRAIN + 2, 1, 12, 12)
    assert small.spec.size == 12


def test_the_spec_without_data_lists_the_tree_and_opens_no_image(tmp_path):
    root = tree(tmp_path / "d")
    (root / "train" / "seven" / "5.png").unlink()  # the smallest class: seven, 5 images
    save(root / "train" / "one" / "nested", DIGITS[1][0][:2])  # a sub-folder's images count, as ImageFolder's
    assert load_dataset("folder", root=str(root)).train_labels.bincount().tolist() == [
        TRAIN + 2,
        TRAIN - 1,
        TRAIN,
    ]
    (root / "train" / "three" / "0.png").write_text("not an image: listing does not open it")
    spec = spec_for("folder", {"root": str(root), "channels": 1})
    assert (spec.channels, spec.size, spec.num_classes, spec.smallest_class) == (1, 32, 3, TRAIN - 1)
    assert spec.mean == spec.std == ()  # measured when the images load, never guessed
    with pytest.raises(ValueError, match="spec_for"):
        get_spec("folder")


def test_test_split_is_val_or_test_and_must_be_chosen_where_both_exist(tmp_path):
    root = tree(tmp_path / "d", split="test")
    assert torch.equal(load_dataset("folder", root=str(root), size=28, channels=1).test_images, expected(1))
    tree(root, split="val", transform=lambda x: 255 - x)
    with pytest.raises(FolderDatasetError, match=r"has both val/ and test/.*test_split=val"):
        load_dataset("folder", root=str(root))
    picked = load_dataset("folder", root=str(root), size=28, channels=1, test_split="val")
    assert torch.equal(picked.test_images, 255 - expected(1))


# --- prepare ----------------------------------------------------------------------------------


def test_a_prepared_copy_reads_back_the_same_data_and_a_changed_tree_is_decoded_again(tmp_path, capsys):
    root = tree(tmp_path / "my photos", transform=colour)  # a space in the name: kept out of the key
    data_dir = tmp_path / "data"
    raw = load_dataset("folder", data_dir, root=str(root), size=28)
    folder = prepare_dataset("folder", data_dir, root=str(root), size=28, progress=False)
    assert folder.parent == data_dir / "prepared"
    assert folder.name.startswith("folder_my-photos-")
    assert folder.name.endswith("_3ch_28px")
    prepared = load_dataset("folder", data_dir, root=str(root), size=28)
    assert prepared.source == str(folder)
    assert prepared.spec == raw.spec  # the same measured mean and std, bit for bit
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(prepared, key), getattr(raw, key)), key
    assert load_dataset("folder", data_dir, root=str(root), size=20).source == str(root)  # another size
    save(root / "train" / "one" / "extra", DIGITS[3][0][:1])  # a new image: the copy is stale
    changed = load_dataset("folder", data_dir, root=str(root), size=28)
    assert changed.source == str(root)
    assert changed.train_labels.bincount().tolist() == [TRAIN + 1, TRAIN, TRAIN]
    prepare_main(["folder", "--data-dir", str(data_dir), "--root", str(root), "--size", "28"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith(f"prepared: {data_dir / 'prepared' / 'folder_my-photos-'}")
    assert load_dataset("folder", data_dir, root=str(root), size=28).source == out.removeprefix("prepared: ")


# --- refusals ---------------------------------------------------------------------------------


def _one_class(root: Path) -> None:
    for name in ("seven", "three"):
        for split in ("train", "val"):
            for file in (root / split / name).iterdir():
                file.unlink()
            (root / split / name).rmdir()


def _renamed_val_class(root: Path) -> None:
    (root / "val" / "seven").rename(root / "val" / "sevens")


def _empty_class(root: Path) -> None:
    for file in (root / "val" / "three").iterdir():
        file.rename(root / "val" / "three" / f"{file.stem}.txt")


BAD_TREES = {  # name: (what to do to a good tree, what the line says)
    "no_train": (lambda r: (r / "train").rename(r / "training"), ["{root} has no train/ folder", "allowed"]),
    "no_test_split": (lambda r: (r / "val").rename(r / "valid"), ["{root} has neither val/ nor test/"]),
    "one_class": (_one_class, ["{root}/train has 1 class folder(s) (one)", "allowed: 2 or more"]),
    "val_differs": (
        _renamed_val_class,
        ["{root}/val has other class folders", "missing seven; extra sevens"],
    ),
    "empty_class": (_empty_class, ["{root}/val/three holds no images", "allowed: files ending in", ".png"]),
}


@pytest.mark.parametrize("case", sorted(BAD_TREES))
def test_a_bad_tree_is_refused_in_one_line_naming_the_path(tmp_path, compose_train, case):
    root = tree(tmp_path / "d")
    damage, said = BAD_TREES[case]
    damage(root)
    for refuse in (
        lambda: load_dataset("folder", root=str(root)),
        lambda: validate(
            OmegaConf.merge(compose_train(["dataset=folder"]), {"dataset": {"options": {"root": str(root)}}})
        ),
    ):
        with pytest.raises(FolderDatasetError) as err:
            refuse()
        message = str(err.value)
        assert "\n" not in message
        for text in said:
            assert text.format(root=root) in message


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (
            {"root": "{tmp}/absent"},
            "dataset.options.root={tmp}/absent does not exist; give the folder holding",
        ),
        ({"root": "{tmp}/file"}, "dataset.options.root={tmp}/file is not a folder"),
        ({"root": None}, "dataset=folder needs dataset.options.root=<path>"),
        ({"channels": 2}, "dataset.options.channels=2 is not allowed; allowed: 1 (greyscale), 3 (colour)"),
        ({"size": 0}, "dataset.options.size=0 must be an integer >= 1"),
        ({"test_split": "dev"}, "dataset.options.test_split='dev' is not allowed; allowed: null"),
        (
            {"test_split": "test"},
            "dataset.options.test_split=test: {tmp}/d/test is not a folder; allowed: val",
        ),
        ({"colour": True}, "dataset.options.colour is not an option of dataset=folder; allowed: root, size"),
    ],
)
def test_bad_options_are_refused_in_one_line(tmp_path, options, said):
    tree(tmp_path / "d")
    (tmp_path / "file").write_text("")
    given = {"root": str(tmp_path / "d")}
    given.update({k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in options.items()})
    with pytest.raises(FolderDatasetError) as err:
        load_dataset("folder", **given)
    assert said.format(tmp=tmp_path) in str(err.value)
    assert "\n" not in str(err.value)


def test_an_unreadable_image_is_named_when_the_data_loads_or_is_prepared(tmp_path, capsys):
    root = tree(tmp_path / "d")
    broken = root / "train" / "seven" / "3.png"
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated file
    with pytest.raises(FolderDatasetError) as err:
        load_dataset("folder", root=str(root))
    assert str(err.value).startswith(f"{broken} cannot be read as an image (")
    assert "allowed: image files PIL can decode" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit) as stop:
        prepare_main(["folder", "--data-dir", str(tmp_path / "data"), "--root", str(root)])
    assert stop.value.code == 2
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"error: {broken} cannot be read")


# --- the config -------------------------------------------------------------------------------


def folder_config(compose_train, root: Path, *overrides: str, channels: int = 3):
    """dataset=folder on ``root``: ``group=option`` overrides composed, ``key=value`` ones merged after."""
    groups = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
    cfg = compose_train(["dataset=folder", f"dataset.options.channels={channels}", *groups])
    values = [o for o in overrides if o not in groups]
    return OmegaConf.merge(cfg, {"dataset": {"options": {"root": str(root)}}}, OmegaConf.from_dotlist(values))


@pytest.mark.parametrize(("channels", "like"), [(3, "cifar10"), (1, "mnist")])
def test_the_recipe_follows_the_channels(compose_train, channels, like):
    folder = compose_train(["dataset=folder", f"dataset.options.channels={channels}"])
    reference = compose_train([f"dataset={like}"])
    assert OmegaConf.to_container(folder.dataset.recipe, resolve=True) == OmegaConf.to_container(
        reference.dataset.recipe, resolve=True
    )
    assert folder.distill.lr_img == reference.distill.lr_img  # and it reaches the loop's blocks


def test_validate_accepts_a_tree_that_fits_and_names_the_smallest_class_otherwise(tmp_path, compose_train):
    root = tree(tmp_path / "d")
    for file in sorted((root / "train" / "seven").iterdir())[:2]:
        file.unlink()  # seven: 4 images, the smallest class
    validate(folder_config(compose_train, root, *FITS, channels=1))
    smallest = re.escape(f"the smallest class of folder ({root / 'train' / 'seven'}) has 4 images")
    init = rf"ipc x factor\^2 = 2 x 2\^2 = 8 real images .* {smallest}"
    with pytest.raises(ConfigError, match=init):
        validate(folder_config(compose_train, root, "ipc=2", "sampler=random", "distill.batch_real=4"))
    with pytest.raises(ConfigError, match=rf"sampler.n_clusters \(N\) = 128 is too large: {smallest}"):
        validate(folder_config(compose_train, root, "ipc=1"))  # the default sampler: N = 128
    with pytest.raises(ConfigError, match=r"dataset\.options\.root is missing \(\?\?\?\); dataset=folder"):
        validate(compose_train(["dataset=folder", *FITS]))
    with pytest.raises(ConfigError, match=r"cannot run on 3x32x32 images: .*depth 6"):  # the tree's shape
        validate(folder_config(compose_train, root, *FITS, "model.depth=6"))


def test_evaluate_checks_a_baseline_against_the_smallest_folder(tmp_path, compose_eval):
    root = tree(tmp_path / "d")
    cfg = compose_eval(["dataset=folder", "synthetic=random", "ipc=7"])
    smallest = re.escape(f"the smallest class of folder ({root / 'train' / 'one'}) has 6 images")
    with pytest.raises(ConfigError, match=rf"ipc=7 is too large for the random baseline: {smallest}"):
        validate_eval(OmegaConf.merge(cfg, {"dataset": {"options": {"root": str(root)}}}))


# --- the command line -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """A tree, and a tiny distillation of it (1 x 2 steps, a 2-epoch evaluation) started at once: the
    refusals below run while it works."""
    cmds = Commands(tmp_path_factory.mktemp("cli"))
    root = tree(cmds.root / "tree")
    cmds.start(
        "run",
        "dream_pl.train",
        "dataset=folder",
        f"dataset.options.root={root}",
        "dataset.options.channels=1",
        "debug=fdr",
        "ipc=1",
        "model.width=8",
        "sampler.n_clusters=4",
        "trainer.enable_progress_bar=false",
        f"out_dir={cmds.root / 'run'}",
    )
    yield cmds
    cmds.stop()


def test_the_command_line_refuses_a_bad_folder_in_one_line_before_any_work(commands):
    root = commands.root / "tree"
    train = ("dream_pl.train", "dataset=folder")
    runs = refusals(
        commands,
        {
            "no_root": train,
            "absent": (*train, f"dataset.options.root={commands.root / 'absent'}"),
            "too_small": (*train, f"dataset.options.root={root}", "ipc=2", "sampler=random"),
            "channels": (*train, f"dataset.options.root={root}", "dataset.options.channels=4"),
            "eval_no_root": ("dream_pl.evaluate", "dataset=folder", "synthetic=random"),
        },
    )
    assert_one_line_error(runs["no_root"], "dataset.options.root is missing", "dataset.options.root=<value>")
    assert_one_line_error(runs["absent"], f"dataset.options.root={commands.root / 'absent'} does not exist")
    assert_one_line_error(runs["too_small"], "2 x 2^2 = 8", f"folder ({root / 'train' / 'one'}) has 6 images")
    assert_one_line_error(
        runs["channels"], "dataset.options.channels=4", "allowed: 1 (greyscale), 3 (colour)"
    )
    assert_one_line_error(runs["eval_no_root"], "dataset.options.root is missing")
    assert not (commands.root / "logs").exists()  # refused before any folder was made


def test_the_command_line_distils_and_evaluates_a_folder(commands):
    run = commands.result("run")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"folder: read {commands.root / 'tree'} (train 18, test 9 images, 3 classes)" in run.stdout
    synthetic = load_synthetic(commands.root / "run")
    assert (synthetic.dataset, tuple(synthetic.images.shape[1:])) == ("folder", (1, 32, 32))
    assert sorted(synthetic.labels.tolist()) == sorted([0, 1, 2] * 4)  # ipc 1 x factor^2 4 per class
    assert (commands.root / "run" / "eval.json").is_file()
