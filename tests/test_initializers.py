"""Tests for the synthetic-set initialisers on real MNIST (mnist_5k, 400 training images per class)."""

import math
from dataclasses import replace

import pytest
import torch

from dream_pl.data import RealData, RealSet, load_dataset
from dream_pl.evaluation.sets import baseline_set
from dream_pl.initializers import KMeansInit, NoiseInit, RandomRealInit
from dream_pl.models import create_model
from dream_pl.synthetic import decode, tile

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def data() -> RealData:
    return load_dataset("mnist_5k")


@pytest.fixture(scope="module")
def real(data) -> RealSet:
    return RealSet.from_data(data)


@pytest.fixture(scope="module")
def class_pixels(data) -> list[torch.Tensor]:
    """Each class's training images as floats in [0, 1], straight from the loaded uint8 split."""
    return [data.train_images[data.train_labels == c].float() / 255 for c in range(NUM_CLASSES)]


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("convnet", channels=1, num_classes=NUM_CLASSES, size=28, width=8)


KMEANS = KMeansInit(max_iter=10)
CONFIGS = [(2, 1), (1, 2)]  # (ipc, factor)


@pytest.fixture(scope="module")
def kmeans_stored(real, net) -> dict[tuple[int, int], torch.Tensor]:
    """One KMeansInit run per config (the embedding pass dominates; shared by the tests below)."""
    net.train()
    out = {(ipc, f): KMEANS(real, net, ipc=ipc, factor=f, seed=0) for ipc, f in CONFIGS}
    assert net.training  # the embedding pass switches to eval and back
    return out


def match_index(image: torch.Tensor, candidates: torch.Tensor) -> int:
    """Index of the candidate equal to ``image`` (exactly), or -1."""
    hits = (candidates == image).flatten(1).all(1).nonzero().flatten()
    return int(hits[0]) if len(hits) else -1


def cell_sources(stored: torch.Tensor, class_pixels: list[torch.Tensor], ipc: int, factor: int) -> list[int]:
    """For every cell of every stored image, the index of the real image it is a downsized copy of.

    28 px and factor 2: 14 px cells, and nearest resizing 28 -> 14 keeps source pixel 2i, i.e.
    ``real[..., ::2, ::2]``. Returns within-class indices, -1 where the cell matches no image of the
    stored image's class.
    """
    side = 28 // factor
    found = []
    for j, image in enumerate(stored):
        candidates = class_pixels[j // ipc][..., ::factor, ::factor]
        for r in range(factor):
            for c in range(factor):
                cell = image[:, r * side : (r + 1) * side, c * side : (c + 1) * side]
                found.append(match_index(cell, candidates))
    return found


def check_range_and_shape(stored: torch.Tensor, ipc: int) -> None:
    assert stored.shape == (NUM_CLASSES * ipc, 1, 28, 28)
    assert stored.dtype == torch.float32
    assert float(stored.min()) >= 0.0
    assert float(stored.max()) <= 1.0


def check_sources(stored: torch.Tensor, class_pixels: list[torch.Tensor], ipc: int, factor: int) -> None:
    found = cell_sources(stored, class_pixels, ipc, factor)
    assert -1 not in found
    per_class = ipc * factor**2
    for c in range(NUM_CLASSES):  # a class's cells use distinct real images
        block = found[c * per_class : (c + 1) * per_class]
        assert len(set(block)) == per_class


@pytest.mark.parametrize(("ipc", "factor"), CONFIGS)
def test_random_real_init_tiles_real_images_of_each_class(real, class_pixels, net, ipc, factor):
    stored = RandomRealInit()(real, net, ipc=ipc, factor=factor, seed=0)
    check_range_and_shape(stored, ipc)
    check_sources(stored, class_pixels, ipc, factor)


def test_random_real_init_is_seeded(real, net):
    init = RandomRealInit()
    a = init(real, net, ipc=1, factor=2, seed=3)
    assert torch.equal(a, init(real, net, ipc=1, factor=2, seed=3))
    assert not torch.equal(a, init(real, net, ipc=1, factor=2, seed=4))


@pytest.mark.parametrize(("ipc", "factor"), CONFIGS)
def test_kmeans_init_tiles_real_images_of_each_class(kmeans_stored, class_pixels, ipc, factor):
    stored = kmeans_stored[(ipc, factor)]
    check_range_and_shape(stored, ipc)
    check_sources(stored, class_pixels, ipc, factor)


def test_kmeans_init_is_deterministic_for_a_seed(kmeans_stored, real, net):
    assert torch.equal(KMEANS(real, net, ipc=1, factor=2, seed=0), kmeans_stored[(1, 2)])


def test_noise_init_is_clamped_noise_around_grey(real, net):
    stored = NoiseInit()(real, net, ipc=2, factor=2, seed=0)
    check_range_and_shape(stored, 2)  # the factor does not change how many images are stored
    assert float(stored.mean()) == pytest.approx(0.5, abs=0.01)
    # N(0.5, 0.25^2) falls below 0 with probability Phi(-2) = 0.0228; those pixels clamp to exactly 0
    below = 0.5 * math.erfc(2 / math.sqrt(2))
    assert float((stored == 0).float().mean()) == pytest.approx(below, abs=0.004)
    assert float((stored == 1).float().mean()) == pytest.approx(below, abs=0.004)
    assert torch.equal(stored, NoiseInit()(real, net, ipc=2, factor=2, seed=0))


def test_first_order_takes_idcs_picks(real, class_pixels, net):
    stored = RandomRealInit(order="first")(real, net, ipc=1, factor=2, seed=0)
    expected = torch.cat([tile(class_pixels[c][:4], 2) for c in range(NUM_CLASSES)])  # first f^2 in order
    assert torch.equal(stored, expected)
    with pytest.raises(ValueError, match="order='last'"):
        RandomRealInit(order="last")


def test_tiled_random_init_trains_better_than_the_same_number_of_whole_images(
    data, real, net, mnist_protocol, evaluate_on_test_set
):
    """The multi-formation init holds f^2 real images per stored image: evaluated on real MNIST, 4 tiled
    random images per class must beat 1 whole random image per class (the random-real baseline of the same
    storage) by a wide margin. A broken tiling or decode (crops misaligned, wrong class) would not."""
    stored = RandomRealInit()(real, net, ipc=1, factor=2, seed=0)
    tiled = torch.cat([decode(stored[c : c + 1], 2) for c in range(NUM_CLASSES)])
    tiled_labels = torch.arange(NUM_CLASSES).repeat_interleave(4)
    protocol = replace(mnist_protocol, epochs=100, repeats=2)

    def accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
        return evaluate_on_test_set(data, images, labels, protocol, width=32).mean

    init_acc = accuracy(tiled, tiled_labels)
    baseline_acc = accuracy(*baseline_set("random", data, 1, seed=0))
    assert init_acc > baseline_acc + 5, (init_acc, baseline_acc)


def test_kmeans_init_of_some_classes_is_those_rows_of_the_full_init(real, net, kmeans_stored):
    """A process of a sharded run initialises its own classes only, as one process does (per-class seeds)."""
    ipc, f = CONFIGS[0]
    part = KMEANS(real, net, ipc=ipc, factor=f, seed=0, classes=(7, 1, 4))
    full = kmeans_stored[(ipc, f)].view(NUM_CLASSES, ipc, *part.shape[1:])
    torch.testing.assert_close(part, full[[7, 1, 4]].flatten(0, 1), rtol=0, atol=0)


@pytest.mark.parametrize("init", [RandomRealInit(), RandomRealInit(order="first"), NoiseInit()])
def test_every_initialiser_gives_the_rows_of_the_classes_asked_for(real, net, init):
    full = init(real, net, ipc=2, factor=2, seed=3)
    part = init(real, net, ipc=2, factor=2, seed=3, classes=(5, 0))
    assert part.shape == (4, *full.shape[1:])
    assert torch.equal(part, torch.cat([full[10:12], full[0:2]]))
    assert init(real, net, ipc=2, factor=2, seed=3, classes=()).shape == (0, *full.shape[1:])
