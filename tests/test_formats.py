"""Sets saved by other codebases, read as pixels: each file written as the public code's save call writes it.

Every fabricated set starts from real mnist_5k images (pixels p = uint8 / 255); a reader must give p back
(within float rounding) with the same labels, and a file that is not what its format writes must be
refused in one line naming the file. Nothing here trains a network.
"""

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clitools import Commands, assert_one_line_error, refusals
from PIL import Image

from dream_pl.config import ConfigError, validate_eval
from dream_pl.data import get_spec, load_dataset
from dream_pl.evaluation.formats import (
    DC_STATS,
    FORMATS,
    UnsupportedSetError,
    decode_by_class,
    read_set,
)
from dream_pl.evaluation.sets import DISTILLED, SetMismatchError, baseline_label
from dream_pl.synthetic import SyntheticData, decode_classes, save_synthetic, tile
from dream_pl.workflow import evaluation_sets

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # DatasetCondensation's and mtt-distillation's MNIST constants
EVALUATE = "dream_pl.evaluate"


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist_5k")


def real_per_class(mnist, n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real images of every class, class-major, as pixels in [0, 1], with their labels."""
    picks = [torch.nonzero(mnist.train_labels == c).flatten()[start : start + n] for c in range(10)]
    idx = torch.cat(picks)
    return mnist.train_images[idx].float() / 255, mnist.train_labels[idx].clone()


def normalise(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """torchvision's Normalize(mean, std), as the public repositories' get_dataset applies it."""
    m, s = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (mean, std))
    return (pixels - m) / s


def assert_one_line(err: pytest.ExceptionInfo, *names: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    for name in names:
        assert name in message, message


# --- dream_pl ---------------------------------------------------------------------------------


def test_dream_pl_round_trip(mnist, tmp_path):
    """save_synthetic, then the evaluate path's reader: the same set, factor and ipc."""
    pixels, labels = real_per_class(mnist, 3)
    save_synthetic(tmp_path / "synthetic.pt", SyntheticData(pixels, labels, dataset="mnist_5k"))
    for target in (tmp_path / "synthetic.pt", tmp_path):
        data = read_set(target, "dream_pl", mnist)
        torch.testing.assert_close(data.images, pixels)
        assert torch.equal(data.labels, labels)
        assert (data.factor, data.ipc, data.dataset) == (1, 3, "mnist_5k")


# --- dc / dsa / dm ----------------------------------------------------------------------------


def write_dc(path: Path, experiments: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """As DatasetCondensation's main.py / main_DM.py: after each experiment, the whole list so far.

    ``data_save.append([copy.deepcopy(image_syn.detach().cpu()), copy.deepcopy(label_syn.detach().cpu())])``
    then ``torch.save({'data': data_save, 'accs_all_exps': accs_all_exps}, 'res_<method>_..._<ipc>ipc.pt')``;
    the accuracies are numpy floats (their ``epoch`` returns ``np.sum(...) / n``).
    """
    data_save = [[copy.deepcopy(x.detach().cpu()), copy.deepcopy(y.detach().cpu())] for x, y in experiments]
    accs_all_exps = {"ConvNet": [np.sum(np.array([1, 0, 1])) / 3 for _ in experiments]}
    torch.save({"data": data_save, "accs_all_exps": accs_all_exps}, path)


@pytest.mark.parametrize("method", ["dc", "dsa", "dm"])
def test_dc_result_file_gives_back_the_pixels_of_the_chosen_experiment(mnist, tmp_path, method):
    """Two experiments of normalised real images (``--init real``); each index reads its own."""
    first, labels = real_per_class(mnist, 2)
    second, _ = real_per_class(mnist, 2, start=2)
    path = tmp_path / f"res_{method.upper()}_MNIST_ConvNet_2ipc.pt"
    write_dc(path, [(normalise(p, [MNIST_MEAN], [MNIST_STD]), labels) for p in (first, second)])
    for index, pixels in ((0, first), (1, second)):
        data = read_set(path, method, mnist, experiment_index=index)
        torch.testing.assert_close(data.images, pixels, atol=1e-6, rtol=0)
        assert torch.equal(data.labels, labels)
        assert data.labels.dtype == torch.long
        assert (data.factor, data.ipc, data.mean, data.std) == (1, 2, (MNIST_MEAN,), (MNIST_STD,))
    with pytest.raises(SetMismatchError) as err:
        read_set(path, method, mnist, experiment_index=2)
    assert_one_line(err, "experiment_index=2", str(path), "2 experiment", "0..1")


def test_dc_cifar100_is_unnormalised_with_the_repositorys_own_constants(mnist, tmp_path):
    """DatasetCondensation normalises CIFAR-100 with (0.5071, ...) / (0.2673, ...), not this project's.

    Real digits padded to 32 px and repeated to three channels stand in for CIFAR-100 pixels.
    """
    pixels, labels = real_per_class(mnist, 1)
    pixels = F.pad(pixels, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    assert DC_STATS["cifar100"] != (get_spec("cifar100").mean, get_spec("cifar100").std)
    path = tmp_path / "res_DSA_CIFAR100_ConvNet_1ipc.pt"
    write_dc(path, [(normalise(pixels, *DC_STATS["cifar100"]), labels)])
    data = read_set(path, "dsa", get_spec("cifar100"))
    torch.testing.assert_close(data.images, pixels, atol=1e-6, rtol=0)
    assert data.mean == get_spec("cifar100").mean  # the evaluator normalises with this project's


def test_dc_file_named_for_another_dataset_is_refused(mnist, tmp_path):
    pixels, labels = real_per_class(mnist, 1)
    path = tmp_path / "res_DC_CIFAR10_ConvNet_1ipc.pt"
    write_dc(path, [(pixels, labels)])
    with pytest.raises(SetMismatchError) as err:
        read_set(path, "dc", mnist)
    assert_one_line(err, str(path), "CIFAR10", "dataset=mnist_5k", "dataset=cifar10")


# --- mtt --------------------------------------------------------------------------------------


def write_mtt(folder: Path, images: torch.Tensor, labels: torch.Tensor, it: str) -> None:
    """As mtt-distillation's distill.py: ``torch.save(image_save.cpu(), 'images_<it>.pt')``, labels alike."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(images.cpu(), folder / f"images_{it}.pt")
    torch.save(labels.cpu(), folder / f"labels_{it}.pt")


def test_mtt_file_or_folder_gives_back_the_pixels(mnist, tmp_path):
    """images_best.pt / labels_best.pt from a folder; images_<it>.pt finds labels_<it>.pt beside it."""
    best, labels = real_per_class(mnist, 2)
    other, _ = real_per_class(mnist, 2, start=5)
    write_mtt(tmp_path, normalise(best, [MNIST_MEAN], [MNIST_STD]), labels, "best")
    write_mtt(tmp_path, normalise(other, [MNIST_MEAN], [MNIST_STD]), labels, "1000")
    for target, pixels in ((tmp_path, best), (tmp_path / "images_1000.pt", other)):
        data = read_set(target, "mtt", mnist)
        torch.testing.assert_close(data.images, pixels, atol=1e-6, rtol=0)
        assert torch.equal(data.labels, labels)


def test_mtt_zca_sets_are_refused_but_their_pixel_copy_is_read(mnist, tmp_path):
    """With --zca MTT also saves ``images_zca_<it>.pt``: the set mapped back to pixels (no Normalize)."""
    pixels, labels = real_per_class(mnist, 1)
    write_mtt(tmp_path, torch.randn_like(pixels), labels, "500")  # whitened: nothing to compare with
    torch.save(pixels.cpu(), tmp_path / "images_zca_500.pt")
    with pytest.raises(UnsupportedSetError) as err:
        read_set(tmp_path / "images_500.pt", "mtt", mnist, zca=True)
    assert_one_line(err, "zca=true", "not supported yet", "trains on pixels", "images_zca_<it>.pt")
    data = read_set(tmp_path / "images_zca_500.pt", "mtt", mnist, zca=True)
    torch.testing.assert_close(data.images, pixels)
    assert torch.equal(data.labels, labels)


# --- idc / dream ------------------------------------------------------------------------------


def test_hand_made_2x2_tiles_decode_in_crop_position_major_order(mnist, tmp_path):
    """Stored image of class c: quadrants of constant value; factor 2 gives the four quadrants, in order
    (0, 0), (0, 1), (1, 0), (1, 1), each upsampled to 28 x 28 (a constant stays constant)."""
    quadrant = {(0, 0): 0.1, (0, 1): 0.3, (1, 0): 0.6, (1, 1): 0.9}
    stored = torch.zeros(10, 1, 28, 28)
    for (i, j), value in quadrant.items():
        stored[:, :, 14 * i : 14 * (i + 1), 14 * j : 14 * (j + 1)] = value
    stored += torch.arange(10).view(10, 1, 1, 1) * 0.01  # a class's shade
    torch.save([stored, torch.arange(10)], tmp_path / "data.pt")
    data = read_set(tmp_path / "data.pt", "idc", mnist, factor=2)
    assert data.images.shape == (40, 1, 28, 28)
    assert data.labels.tolist() == [c for c in range(10) for _ in range(4)]
    for c in range(10):
        for k, value in enumerate(quadrant.values()):
            torch.testing.assert_close(data.images[4 * c + k], torch.full((1, 28, 28), value + 0.01 * c))
    assert (data.factor, data.ipc) == (2, 1)
    torch.testing.assert_close(data.stored, stored)


@pytest.mark.parametrize(("fmt", "name"), [("idc", "data.pt"), ("dream", "data80.pt")])
def test_idc_and_dream_files_decode_as_this_projects_sets(mnist, tmp_path, fmt, name):
    """As IDC's / DREAM's condense.py: ``torch.save([synset.data.detach().cpu(), synset.targets.cpu()],
    'data.pt' / f'data{it+1}.pt')``: pixel-space stored images tiled from real images (IDC's mix init).

    Stored values outside [0, 1] (IDC clamps only once per outer iteration) are not clamped.
    """
    ipc, factor = 2, 2
    real, _ = real_per_class(mnist, ipc * factor**2)
    stored = torch.cat([tile(block, factor) for block in real.split(ipc * factor**2)])
    stored[0, 0, 0, 0] = 1.25
    targets = torch.arange(10).repeat_interleave(ipc)
    torch.save([stored.detach().cpu(), targets.cpu()], tmp_path / name)
    data = read_set(tmp_path / name, fmt, mnist, factor=factor)
    images, labels = decode_classes(stored, range(10), ipc, factor)
    torch.testing.assert_close(data.images, images)
    assert torch.equal(data.labels, labels)
    assert data.images.max() > 1  # not clamped
    assert (data.factor, data.ipc) == (factor, ipc)


def test_dream_folder_reads_its_latest_set(mnist, tmp_path):
    pixels, labels = real_per_class(mnist, 1)
    for it, shift in ((40, 0.0), (120, 0.5), (80, 0.25)):
        torch.save([pixels + shift, labels], tmp_path / f"data{it}.pt")
    torch.testing.assert_close(read_set(tmp_path, "dream", mnist).images, pixels + 0.5)


def test_decode_by_class_groups_classes_in_any_order(mnist):
    """Labels not in class-major blocks decode as the sorted layout would."""
    pixels, labels = real_per_class(mnist, 2)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, decoded = decode_by_class(pixels[order], labels[order], 2)
    expected, expected_labels = decode_by_class(pixels, labels, 2)
    assert torch.equal(decoded, expected_labels)
    for c in range(10):  # within a class the order of its images may differ: compare as sets of sums
        got = images[decoded == c].flatten(1).sum(1).sort().values
        torch.testing.assert_close(got, expected[expected_labels == c].flatten(1).sum(1).sort().values)


# --- folder -----------------------------------------------------------------------------------


def write_folder(root: Path, pixels: torch.Tensor, labels: torch.Tensor, names: list[str]) -> None:
    """One PNG per image, in ``root/<names[label]>/<i>.png``."""
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        folder = root / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        array = (image[0] * 255).round().to(torch.uint8).numpy()
        Image.fromarray(array).save(folder / f"{i:03d}.png")


@pytest.mark.parametrize(
    "names",
    [
        [str(c) for c in range(10)],  # integer names: "10" would sort before "2", the number decides
        [f"class_{chr(ord('a') + c)}" for c in range(10)],  # sorted names
    ],
)
def test_folder_of_pngs_gives_back_the_pixels(mnist, tmp_path, names):
    pixels, labels = real_per_class(mnist, 2)
    write_folder(tmp_path, pixels, labels, names)
    (tmp_path / "README.txt").write_text("files beside the class folders are not classes")
    data = read_set(tmp_path, "folder", mnist)
    torch.testing.assert_close(data.images, pixels, atol=0, rtol=0)
    assert torch.equal(data.labels, labels)


def test_folder_rgb_images_are_converted_to_the_datasets_channels(mnist, tmp_path):
    pixels, labels = real_per_class(mnist, 1)
    for c, image in zip(labels.tolist(), pixels, strict=True):
        (tmp_path / str(c)).mkdir()
        gray = (image[0] * 255).round().to(torch.uint8).numpy()
        Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / str(c) / "a.jpg", quality=100)
    data = read_set(tmp_path, "folder", mnist)
    assert data.images.shape == (10, 1, 28, 28)
    assert torch.equal(data.labels, labels)
    assert (data.images - pixels).abs().mean() < 0.01  # JPEG is lossy; gray stays gray


@pytest.mark.parametrize("case", ["empty", "unreadable", "not_an_image", "classes", "numbers", "size"])
def test_bad_folders_are_refused_in_one_line(mnist, tmp_path, case):
    pixels, labels = real_per_class(mnist, 1)
    write_folder(tmp_path, pixels, labels, [str(c) for c in range(10)])
    named = {
        "empty": tmp_path / "3",
        "unreadable": tmp_path / "3" / "003.png",
        "not_an_image": tmp_path / "4" / "notes.txt",
        "classes": tmp_path,
        "numbers": tmp_path,
        "size": tmp_path / "5" / "005.png",
    }[case]
    if case == "empty":
        (tmp_path / "3" / "003.png").unlink()
    elif case == "unreadable":
        named.write_bytes(b"not a png at all")
    elif case == "not_an_image":
        named.write_text("a note")
    elif case == "classes":
        (tmp_path / "9" / "009.png").unlink()
        (tmp_path / "9").rmdir()
    elif case == "numbers":
        (tmp_path / "9").rename(tmp_path / "10")
    else:
        Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(named)
    with pytest.raises(SetMismatchError) as err:
        read_set(tmp_path, "folder", mnist)
    assert_one_line(err, str(named))
    assert {"classes": "9 class folders", "numbers": "0..9", "size": "32x32"}.get(
        case, "format=folder"
    ) in str(err.value)


# --- files that are not what their format writes --------------------------------------------------


class NotATensor:
    """A pickled object: loading it would run code the file names."""


def bad_files(tmp_path: Path, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, tuple[str, Path]]:
    """name -> (format, file) for files a format's reader must refuse, each written here."""
    files = {
        "dc_list": ("dc", [pixels, labels]),
        "dc_no_data": ("dc", {"accs_all_exps": {}}),
        "dc_int_images": ("dm", {"data": [[(pixels * 255).to(torch.uint8), labels]]}),
        "dc_flat_images": ("dsa", {"data": [[pixels.flatten(1), labels]]}),
        "dc_entry": ("dc", {"data": [pixels]}),
        "idc_dict": ("idc", {"data": pixels}),
        "idc_three": ("idc", [pixels, labels, labels]),
        "idc_float_labels": ("dream", [pixels, labels.float()]),
        "idc_lengths": ("idc", [pixels, labels[:-1]]),
        "pickled_object": ("idc", [pixels, NotATensor()]),
    }
    out = {}
    for name, (fmt, blob) in files.items():
        torch.save(blob, tmp_path / f"{name}.pt")
        out[name] = (fmt, tmp_path / f"{name}.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "dc_list.pt").read_bytes()[:200])
    out["truncated"] = ("dc", tmp_path / "truncated.pt")
    mtt = tmp_path / "mtt"
    write_mtt(mtt, pixels, labels.float(), "best")
    out["mtt_float_labels"] = ("mtt", mtt / "labels_best.pt")  # the labels file is named
    torch.save({"images": pixels}, mtt / "images_7.pt")
    torch.save(labels, mtt / "labels_7.pt")
    out["mtt_dict"] = ("mtt", mtt / "images_7.pt")
    torch.save(pixels, mtt / "images_9.pt")
    out["mtt_no_labels"] = ("mtt", mtt / "images_9.pt")
    torch.save(pixels, mtt / "synthetic.pt")
    out["mtt_name"] = ("mtt", mtt / "synthetic.pt")
    return out


def test_files_of_the_wrong_shape_or_kind_are_refused_in_one_line(mnist, tmp_path):
    pixels, labels = real_per_class(mnist, 1)
    for name, (fmt, path) in bad_files(tmp_path, pixels, labels).items():
        with pytest.raises(SetMismatchError) as err:
            read_set(path.with_name("images_best.pt") if name == "mtt_float_labels" else path, fmt, mnist)
        assert_one_line(err, str(path), f"format={fmt}", "expected")
        assert "labels_9.pt" in str(err.value) or name != "mtt_no_labels"
        assert "a pickle can run code" in str(err.value) or name != "pickled_object"


def test_a_set_that_does_not_fit_the_dataset_is_refused(mnist, tmp_path):
    """Shape and classes are checked for every format, as for this project's own sets."""
    pixels, labels = real_per_class(mnist, 1)
    torch.save([F.pad(pixels, (2, 2, 2, 2)), labels], tmp_path / "data.pt")
    with pytest.raises(SetMismatchError) as err:
        read_set(tmp_path / "data.pt", "idc", mnist, factor=2)
    assert_one_line(err, str(tmp_path / "data.pt"), "(1, 32, 32)", "(1, 28, 28)")
    write_mtt(tmp_path, pixels, labels + 5, "best")
    with pytest.raises(SetMismatchError) as err:
        read_set(tmp_path, "mtt", mnist)
    assert_one_line(err, "label 14")


def test_missing_path_names_what_the_format_reads(mnist, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        read_set(tmp_path / "nowhere", "mtt", mnist)
    assert_one_line(err, "nowhere", "images_<it>.pt")


# --- the config and the evaluate entry point ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (
            ["format=xyz"],
            "format='xyz' is not allowed; allowed: dream_pl, dc, dsa, dm, mtt, idc, dream, folder",
        ),
        (["format=idc", "factor=0"], "factor=0 must be an integer >= 1"),
        (["format=idc", "factor=29"], "factor=29 is too large for 28-pixel images; allowed: 1..28"),
        (["format=dc", "experiment_index=-1"], "experiment_index=-1 must be an integer >= 0"),
        (["format=mtt", "zca=maybe"], "zca='maybe' must be true or false"),
        (["format=dc", "factor=2"], "factor=2 is read only with format=idc | dream, not format=dc"),
        (["format=idc", "zca=true"], "zca=true is read only with format=mtt, not format=idc"),
        (["experiment_index=1"], "experiment_index=1 is read only with format=dc | dsa | dm"),
    ],
)
def test_format_options_are_validated_before_any_work(compose_eval, tmp_path, overrides, said):
    cfg = compose_eval([f"synthetic={tmp_path}", *overrides])
    with pytest.raises(ConfigError) as err:
        validate_eval(cfg)
    assert_one_line(err, said)


def test_a_baseline_takes_no_format(compose_eval):
    with pytest.raises(ConfigError, match="synthetic=random is a baseline"):
        validate_eval(compose_eval(["synthetic=random", "format=dc"]))


def test_the_formats_the_config_allows_are_the_readers():
    assert list(FORMATS) == ["dream_pl", "dc", "dsa", "dm", "mtt", "idc", "dream", "folder"]


def test_evaluation_sets_reads_the_format_beside_random_real_images(compose_eval, mnist, tmp_path):
    """The evaluate path's sets: the decoded IDC set, and random real images of its stored size (ipc 2)."""
    real, _ = real_per_class(mnist, 8)
    stored = torch.cat([tile(block, 2) for block in real.split(8)])
    torch.save([stored, torch.arange(10).repeat_interleave(2)], tmp_path / "data.pt")
    overrides = [f"synthetic={tmp_path / 'data.pt'}", "format=idc", "factor=2"]
    sets = evaluation_sets(compose_eval([*overrides, "evaluation.baseline=false"]), mnist)
    assert list(sets) == [DISTILLED]
    images, labels = sets[DISTILLED]
    torch.testing.assert_close(images, decode_classes(stored, range(10), 2, 2)[0])
    assert torch.bincount(labels).tolist() == [8] * 10
    with_baseline = evaluation_sets(compose_eval(overrides), mnist)
    assert list(with_baseline) == [DISTILLED, baseline_label("random", 2)]
    assert with_baseline[baseline_label("random", 2)][0].shape == (20, 1, 28, 28)


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> Iterator[Commands]:
    cmds = Commands(tmp_path_factory.mktemp("formats_cli"))
    yield cmds
    cmds.stop()


def test_the_command_line_refuses_a_bad_format_or_file_before_work(commands, mnist):
    """``python -m dream_pl.evaluate`` in one interpreter (clitools.refusals): one line, status 2.

    A good file gets through the pre-check to the job (which the refusal harness stops before any work).
    """
    pixels, labels = real_per_class(mnist, 1)
    idc = commands.root / "data.pt"
    torch.save([pixels, labels], idc)
    mtt = commands.root / "mtt"
    write_mtt(mtt, pixels, labels, "best")
    runs = refusals(
        commands,
        {
            "bad_format": (EVALUATE, f"synthetic={idc}", "format=xyz"),
            "wrong_format": (EVALUATE, f"synthetic={idc}", "format=dc"),
            "zca": (EVALUATE, f"synthetic={mtt}", "format=mtt", "zca=true"),
            "missing": (EVALUATE, f"synthetic={commands.root / 'nowhere.pt'}", "format=idc"),
            "accepted": (EVALUATE, f"synthetic={idc}", "format=idc", "factor=2"),
        },
    )
    assert "not refused before the job started" in runs["accepted"].stderr  # the pre-check let it through
    assert_one_line_error(runs["bad_format"], "format='xyz' is not allowed", "dream_pl", "folder")
    assert_one_line_error(runs["wrong_format"], str(idc), "format=dc", "a list of 2 items", "'data'")
    assert_one_line_error(runs["zca"], "zca=true", "not supported yet", str(mtt))
    assert_one_line_error(runs["missing"], "nowhere.pt", "format=idc")
    assert not (commands.root / "logs").exists()  # refused before Hydra made a run folder
