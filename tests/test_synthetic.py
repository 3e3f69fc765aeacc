"""Tests for the synthetic set: multi-formation decode/tile layout, the module, and the file format."""

import re

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dream_pl.files import atomic_torch_save
from dream_pl.synthetic import (
    SyntheticData,
    SyntheticSet,
    decode,
    decode_classes,
    load_synthetic,
    save_grid,
    save_synthetic,
    tile,
    tile_sizes,
)


def upsample(crop: torch.Tensor, size: int) -> torch.Tensor:
    """IDC's nn.Upsample: bilinear, align_corners=False."""
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)


# --- decode ---------------------------------------------------------------------------------------


def test_decode_factor_one_is_identity():
    x = torch.rand(3, 2, 5, 5)
    torch.testing.assert_close(decode(x, 1), x, rtol=0, atol=0)


def test_decode_factor_two_crops_in_position_order():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = decode(x, 2)
    assert out.shape == (4, 1, 4, 4)
    crops = [x[..., :2, :2], x[..., :2, 2:], x[..., 2:, :2], x[..., 2:, 2:]]  # (0,0) (0,1) (1,0) (1,1)
    for p, crop in enumerate(crops):
        torch.testing.assert_close(out[p : p + 1], upsample(crop, 4))
    # By hand, 2 -> 4 px bilinear samples source rows/cols -0.25 (clamped to 0), 0.25, 0.75, 1.25
    # (clamped to 1 at the far end), i.e. weights (1, 0), (.75, .25), (.25, .75), (0, 1).
    # crop (0, 0) = [[0, 1], [4, 5]]: row 1 = .75 [0, 1] + .25 [4, 5] = [1, 2]; col 1 = .75 + .5.
    assert out[0, 0, 1, 1].item() == pytest.approx(1.25)
    assert out[0, 0, 0, 0].item() == pytest.approx(0.0)
    assert out[0, 0, 3, 3].item() == pytest.approx(5.0)
    # crop (1, 1) = [[10, 11], [14, 15]]
    assert out[3, 0, 0, 0].item() == pytest.approx(10.0)
    assert out[3, 0, 3, 3].item() == pytest.approx(15.0)


def test_decode_orders_every_images_crop_before_the_next_crop():
    n = 3
    x = torch.arange(16.0).view(1, 1, 4, 4) + 100 * torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    out = decode(x, 2)
    assert out.shape == (4 * n, 1, 4, 4)
    for p, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        for k in range(n):
            crop = x[k : k + 1, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
            torch.testing.assert_close(out[p * n + k : p * n + k + 1], upsample(crop, 4))


@pytest.mark.parametrize(("n", "c", "size", "f"), [(2, 3, 8, 2), (1, 1, 9, 3), (4, 3, 32, 2), (2, 1, 28, 1)])
def test_decode_shapes(n, c, size, f):
    assert decode(torch.rand(n, c, size, size), f).shape == (f * f * n, c, size, size)


def test_decode_pads_non_divisible_size_with_half():
    x = torch.rand(1, 1, 5, 5)
    out = decode(x, 2)
    assert out.shape == (4, 1, 5, 5)
    # crop side = ceil(5 / 2) = 3: the grid is 6 x 6, padded right/bottom with 0.5
    padded = torch.full((1, 1, 6, 6), 0.5)
    padded[..., :5, :5] = x
    for p, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        torch.testing.assert_close(
            out[p : p + 1], upsample(padded[..., 3 * r : 3 * r + 3, 3 * c : 3 * c + 3], 5)
        )


def test_decode_padded_pixel_by_hand():
    out = decode(torch.zeros(1, 1, 5, 5), 2)
    assert torch.equal(out[0], torch.zeros(1, 5, 5))  # crop (0, 0) holds no padding
    # crop (1, 1) = [[0, 0, .5], [0, 0, .5], [.5, .5, .5]]. 3 -> 5 px: output 4 samples source
    # (4 + .5) * 3/5 - .5 = 2.2, i.e. the pad row/col only: 0.5. Output 0 samples -0.2 -> 0: 0.
    assert out[3, 0, 4, 4].item() == pytest.approx(0.5)
    assert out[3, 0, 0, 0].item() == pytest.approx(0.0)
    # output 2 samples source 1.0 exactly: the last real pixel, untouched by padding
    assert out[3, 0, 2, 2].item() == pytest.approx(0.0)


def test_decoded_labels_follow_decode_order():
    # class k's one stored image is the constant k: every decoded image must be the constant of its label
    x = torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1).expand(3, 1, 6, 6)
    out, labels = decode_classes(x, [0, 1, 2], ipc=1, factor=2)
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for img, label in zip(out, labels, strict=True):
        torch.testing.assert_close(img, torch.full_like(img, float(label)))


def test_decode_is_differentiable():
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    decode(x, 2).sum().backward()
    assert x.grad is not None
    assert (x.grad > 0).all()


# --- tile -----------------------------------------------------------------------------------------


def test_tile_sizes():
    assert tile_sizes(32, 3) == [11, 11, 10]
    assert tile_sizes(28, 2) == [14, 14]
    assert tile_sizes(5, 2) == [3, 2]
    assert tile_sizes(224, 3) == [75, 75, 74]


def constant_images(count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` RGB images, image i filled with a colour unique to it."""
    colours = torch.stack([torch.tensor([i, 2 * i, 3 * i]) / (4.0 * count) for i in range(count)])
    return colours.view(count, 3, 1, 1).expand(count, 3, size, size).contiguous(), colours


@pytest.mark.parametrize(("f", "n", "size"), [(2, 3, 28), (3, 2, 30), (1, 4, 8)])
def test_tile_then_decode_returns_each_cells_image(f, n, size):
    real, colours = constant_images(f * f * n, size)
    stored = tile(real, f)
    assert stored.shape == (n, 3, size, size)
    out = decode(stored, f)
    # chunk k (real images k*n .. k*n + n - 1) goes to cell k; decode emits cell-major: the same order
    for j, img in enumerate(out):
        torch.testing.assert_close(img, colours[j].view(3, 1, 1).expand_as(img))


def test_tile_then_decode_is_the_low_resolution_round_trip_of_real_images():
    # IDC's init pipeline: each image shrunk (nearest) into its cell, decoded (bilinear) back to full size
    g = torch.Generator().manual_seed(0)
    real = torch.rand(8, 1, 28, 28, generator=g)
    expected = F.interpolate(
        F.interpolate(real, size=(14, 14), mode="nearest"), size=(28, 28), mode="bilinear"
    )
    torch.testing.assert_close(decode(tile(real, 2), 2), expected, rtol=0, atol=1e-6)


def test_tile_cell_contents_and_uneven_grid():
    real, colours = constant_images(9 * 2, 32)
    stored = tile(real, 3)
    # cells are 11, 11, 10 px: stored image 1, cell (2, 1) = chunk 7 -> real image 7 * 2 + 1 = 15
    cell = stored[1, :, 22:32, 11:22]
    torch.testing.assert_close(cell, colours[15].view(3, 1, 1).expand_as(cell))
    # decode crops are ceil(32 / 3) = 11 px, the same as the tiles except in the last row/column
    out = decode(stored, 3)
    for p in (0, 1, 3, 4):  # cells (0,0) (0,1) (1,0) (1,1)
        for k in range(2):
            torch.testing.assert_close(out[p * 2 + k], colours[p * 2 + k].view(3, 1, 1).expand(3, 32, 32))


def test_tile_downsizes_by_nearest():
    real = torch.rand(4, 1, 8, 8)
    stored = tile(real, 2)
    # nearest 8 -> 4 takes source pixel 2i: every other pixel
    torch.testing.assert_close(stored[0, :, :4, 4:], real[1, :, ::2, ::2], rtol=0, atol=0)
    torch.testing.assert_close(stored[0, :, 4:, :4], real[2, :, ::2, ::2], rtol=0, atol=0)


# --- SyntheticSet ---------------------------------------------------------------------------------


def test_synthetic_set_labels_and_decoded():
    images = torch.rand(3 * 2, 1, 4, 4)
    syn = SyntheticSet(images, num_classes=3, ipc=2, factor=2)
    assert syn.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert syn.images is not images
    torch.testing.assert_close(syn.images.data, images)
    dec = syn.class_decoded(1)
    assert dec.shape == (2 * 4, 1, 4, 4)
    # first decoded image of class 1: crop (0, 0) of stored image 2; then crop (0, 0) of stored image 3
    torch.testing.assert_close(dec[0:1], upsample(images[2:3, :, :2, :2], 4))
    torch.testing.assert_close(dec[1:2], upsample(images[3:4, :, :2, :2], 4))
    x, y = decode_classes(syn.images.detach(), syn.classes, syn.ipc, syn.factor)
    assert x.shape == (3 * 2 * 4, 1, 4, 4)
    assert not x.requires_grad
    assert y.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    torch.testing.assert_close(x[8:16], dec.detach())


def test_synthetic_set_factor_one_class_images_are_the_stored_ones():
    images = torch.rand(2 * 3, 1, 5, 5)
    syn = SyntheticSet(images, num_classes=2, ipc=3, factor=1)
    torch.testing.assert_close(syn.class_decoded(1), images[3:6])


def test_class_decoded_gradient_reaches_only_that_class():
    syn = SyntheticSet(torch.rand(3 * 2, 1, 4, 4), num_classes=3, ipc=2, factor=2)
    syn.class_decoded(1).sum().backward()
    grad = syn.images.grad
    assert (grad[2:4] != 0).all()
    assert (grad[:2] == 0).all()
    assert (grad[4:] == 0).all()


def test_synthetic_set_rejects_wrong_count():
    with pytest.raises(ValueError, match=r"expected 6 stored images \(3 classes x ipc 2\), got 5"):
        SyntheticSet(torch.rand(5, 1, 4, 4), num_classes=3, ipc=2, factor=1)
    with pytest.raises(ValueError, match=r"expected 4 stored images \(2 classes x ipc 2\), got 6"):
        SyntheticSet(torch.rand(6, 1, 4, 4), num_classes=3, ipc=2, factor=1, classes=(0, 2))


def test_a_set_holding_some_classes_decodes_and_labels_only_those():
    """A process of a sharded run holds its classes' rows only: class 2's images are its rows 2:4."""
    images = torch.rand(2 * 2, 1, 4, 4)
    syn = SyntheticSet(images, num_classes=3, ipc=2, factor=2, classes=(0, 2))
    assert syn.labels.tolist() == [0, 0, 2, 2]
    torch.testing.assert_close(syn.class_decoded(2)[0:1], upsample(images[2:3, :, :2, :2], 4))
    with pytest.raises(KeyError, match=r"class 1 is not held here \(held: \(0, 2\)\)"):
        syn.class_decoded(1)
    x, y = decode_classes(syn.images.detach(), syn.classes, syn.ipc, syn.factor)
    assert y.tolist() == [0] * 8 + [2] * 8
    torch.testing.assert_close(x[8:], syn.class_decoded(2).detach())
    empty = SyntheticSet(torch.rand(0, 1, 4, 4), num_classes=3, ipc=2, factor=2, classes=())
    assert decode_classes(empty.images.detach(), empty.classes, empty.ipc, empty.factor)[0].shape == (
        0,
        1,
        4,
        4,
    )
    assert empty.labels.numel() == 0


def test_clamp_bounds_in_place():
    images = torch.tensor([-0.5, 0.25, 1.5, 1.0]).view(4, 1, 1, 1)
    syn = SyntheticSet(images, num_classes=2, ipc=2, factor=1)
    param = syn.images
    syn.clamp_()
    assert syn.images is param
    assert syn.images.flatten().tolist() == [0.0, 0.25, 1.0, 1.0]


# --- files ----------------------------------------------------------------------------------------


def sample_data(stored: bool = True) -> SyntheticData:
    g = torch.Generator().manual_seed(0)
    return SyntheticData(
        images=torch.rand(2 * 1 * 4, 1, 6, 6, generator=g),
        labels=torch.tensor([0, 1] * 4),
        factor=2,
        dataset="mnist",
        mean=(0.1307,),
        std=(0.3081,),
        stored=torch.rand(2, 1, 6, 6, generator=g) if stored else None,
        config={"ipc": 1, "matcher": {"metric": "l1"}},
    )


@pytest.mark.parametrize("stored", [True, False])
def test_save_load_round_trip(tmp_path, stored):
    data = sample_data(stored)
    run_dir = tmp_path / "runs" / "a"
    save_synthetic(run_dir / "synthetic.pt", data)  # creates the missing parent folders
    for source in (run_dir / "synthetic.pt", run_dir, str(run_dir)):
        back = load_synthetic(source)
        torch.testing.assert_close(back.images, data.images, rtol=0, atol=0)
        assert torch.equal(back.labels, data.labels)
        assert (back.factor, back.dataset, back.mean, back.std) == (2, "mnist", (0.1307,), (0.3081,))
        assert back.config == {"ipc": 1, "matcher": {"metric": "l1"}}
        if stored:
            assert torch.equal(back.stored, data.stored)
        else:
            assert back.stored is None


def test_save_detaches_images(tmp_path):
    data = sample_data()
    data.images.requires_grad_(True)
    save_synthetic(tmp_path / "s.pt", data)
    assert not load_synthetic(tmp_path / "s.pt").images.requires_grad


def test_atomic_save_leaves_no_temp_files(tmp_path):
    atomic_torch_save({"a": torch.ones(3)}, tmp_path / "x.pt")
    atomic_torch_save({"a": torch.zeros(3)}, tmp_path / "x.pt")  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    assert torch.equal(torch.load(tmp_path / "x.pt")["a"], torch.zeros(3))


def test_atomic_save_keeps_target_when_save_fails(tmp_path, monkeypatch):
    target = tmp_path / "x.pt"
    atomic_torch_save({"a": torch.ones(3)}, target)

    def boom(obj, f):
        f.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"a": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    assert torch.equal(torch.load(target)["a"], torch.ones(3))


def test_load_missing_names_the_path(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_synthetic(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "synthetic.pt"))):
        load_synthetic(tmp_path)  # a directory without synthetic.pt


def test_synthetic_data_dataset_and_ipc():
    # 10 classes x ipc 3 x f^2 = 4 decoded images each
    labels = torch.arange(10).repeat_interleave(12)
    data = SyntheticData(images=torch.rand(120, 1, 4, 4), labels=labels, factor=2)
    assert data.ipc == 3
    assert len(data) == 120
    img, label = data[13]
    assert torch.equal(img, data.images[13])
    assert int(label) == 1
    assert SyntheticData(images=torch.rand(20, 1, 4, 4), labels=torch.arange(10).repeat(2)).ipc == 2


def test_save_grid_png_size_and_fill(tmp_path):
    # class 0: 5 images, class 1: 2, class 2: 3; max 4 per class -> a 3 x 4 grid of 8 px cells
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 3)
    images = torch.zeros(10, 1, 8, 8)
    path = tmp_path / "grid.png"
    save_grid(path, images, labels, max_per_class=4)
    png = Image.open(path)
    # make_grid: padding 1 around and between cells -> 4 * (8 + 1) + 1 wide, 3 * (8 + 1) + 1 high
    assert png.size == (37, 28)
    pixels = torch.tensor(list(png.convert("L").getdata())).view(28, 37)
    cell_top, cell_left = 9 + 1, 2 * 9 + 1  # class 1's row, third column: a blank (white) filler
    assert pixels[cell_top + 3, cell_left + 3] == 255
    assert pixels[cell_top + 3, 9 + 1 + 3] == 0  # class 1's second image: black
