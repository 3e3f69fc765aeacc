"""Differentiable siamese augmentation (DSA) and CutMix on normalised image tensors.

DSA must be differentiable w.r.t. the images because gradient matching back-propagates
through it into the synthetic pixels; with ``shared=True`` one parameter draw is applied to
``cat(real, synthetic)`` so both halves see the same transform (the "siamese" part).
All ops work on normalised tensors, so a zero fill is the dataset-mean colour.
``affine_grid``/``grid_sample`` use ``align_corners=True`` (corner pixel centres at +-1), so
an identity matrix reproduces the input exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TOKENS = ("color", "crop", "cutout", "flip", "scale", "rotate", "translate")
GEOMETRIC = ("crop", "scale", "rotate", "translate")


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Split an underscore-joined strategy; "" and "none" mean identity."""
    if strategy in ("", "none"):
        return ()
    tokens = tuple(strategy.split("_"))
    for token in tokens:
        if token not in TOKENS:
            raise ValueError(f"unknown DSA strategy token {token!r}; allowed tokens: {TOKENS}")
    return tokens


def _view(p: Tensor) -> Tensor:
    """Per-sample parameter [B] -> [B, 1, 1, 1] for broadcasting over images."""
    return p.view(-1, 1, 1, 1)


def _flip(x: Tensor, mask: Tensor) -> Tensor:
    """Horizontally flip the samples where the bool ``mask`` [B] is set."""
    return torch.where(_view(mask), x.flip(-1), x)


def _brightness(x: Tensor, shift: Tensor) -> Tensor:
    """Add a per-sample offset ``shift`` [B]."""
    return x + _view(shift)


def _saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Scale each pixel's deviation from its channel mean by ``factor`` [B]."""
    mean = x.mean(dim=1, keepdim=True)  # [B, 1, H, W]
    return (x - mean) * _view(factor) + mean


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Scale each image's deviation from its global mean by ``factor`` [B]."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
    return (x - mean) * _view(factor) + mean


def _crop(x: Tensor, shift_x: Tensor, shift_y: Tensor) -> Tensor:
    """Translate by integer pixels: out[..., i, j] = x[..., i - shift_y, j - shift_x], else 0.

    Indexes a 1-pixel zero-padded copy with clamped indices, so gradients reach ``x``.
    """
    b, _, h, w = x.shape
    rows = (torch.arange(h, device=x.device) - shift_y[:, None] + 1).clamp(0, h + 1)  # [B, H]
    cols = (torch.arange(w, device=x.device) - shift_x[:, None] + 1).clamp(0, w + 1)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    padded = F.pad(x, (1, 1, 1, 1))  # [B, C, H+2, W+2]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Resample ``x`` with per-sample 2x3 matrices ``theta`` [B, 2, 3], zero padding."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=True)


def _scale(x: Tensor, sx: Tensor, sy: Tensor) -> Tensor:
    """Scale the sampling grid by ``sx``, ``sy`` [B] (factor > 1 shrinks the content)."""
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)
    return _affine(x, theta)


def _rotate(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate by ``angle`` [B] radians about the image centre."""
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    return _affine(x, theta)


def _translate(x: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Sub-pixel shift by ``tx``, ``ty`` [B] in normalised coordinates (2 = full image)."""
    zero, one = torch.zeros_like(tx), torch.ones_like(tx)
    theta = torch.stack([torch.stack([one, zero, tx], -1), torch.stack([zero, one, ty], -1)], 1)
    return _affine(x, theta)


def _cutout(x: Tensor, cy: Tensor, cx: Tensor, size: int) -> Tensor:
    """Zero a ``size`` x ``size`` square with integer centre (cy, cx) [B], clipped to the image."""
    _, _, h, w = x.shape
    top, left = cy - size // 2, cx - size // 2
    i, j = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (i >= top[:, None]) & (i < top[:, None] + size)  # [B, H]
    in_cols = (j >= left[:, None]) & (j < left[:, None] + size)  # [B, W]
    box = in_rows[:, :, None] & in_cols[:, None, :]  # [B, H, W]
    return x * (~box).unsqueeze(1).to(x.dtype)


class _Draw:
    """Draws parameters from ``generator``; one value broadcast to the batch when shared."""

    def __init__(self, x: Tensor, shared: bool, generator: torch.Generator | None) -> None:
        self.batch, self.device, self.generator = x.shape[0], x.device, generator
        self.n = 1 if shared else self.batch

    def uniform(self) -> Tensor:
        """U[0, 1) of shape [B]."""
        u = torch.rand(self.n, generator=self.generator, device=self.device)
        return u.expand(self.batch)

    def integers(self, low: int, high: int) -> Tensor:
        """Integers in [low, high) of shape [B]."""
        k = torch.randint(low, high, (self.n,), generator=self.generator, device=self.device)
        return k.expand(self.batch)


class DiffAugment(nn.Module):
    """DSA: flip -> colour -> one random geometric op -> cutout, as in IDC/DREAM's DiffAug."""

    def __init__(
        self,
        strategy: str = "color_crop_cutout",
        *,
        brightness: float = 1.0,
        saturation: float = 2.0,
        contrast: float = 0.5,
        crop_ratio: float = 0.125,
        scale: float = 1.2,
        rotate_deg: float = 15.0,
        cutout_ratio: float = 0.5,
        flip_p: float = 0.5,
    ) -> None:
        super().__init__()
        self.tokens = parse_strategy(strategy)
        self.geometric = tuple(t for t in GEOMETRIC if t in self.tokens)
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast
        self.crop_ratio, self.scale, self.rotate_deg = crop_ratio, scale, rotate_deg
        self.cutout_ratio, self.flip_p = cutout_ratio, flip_p

    def forward(
        self,
        x: Tensor,
        *,
        shared: bool,
        generator: torch.Generator | None = None,
        choice_generator: torch.Generator | None = None,
        static: bool = False,
    ) -> Tensor:
        """Augment x: [B, C, H, W]; ``shared`` draws one parameter set for the whole batch.

        ``choice_generator`` (a CPU generator) draws what picks a code path (the geometric op), so the
        host never reads a value back from a GPU generator: one device sync fewer per call. Without it,
        the pick comes from ``generator``. ``static=True`` picks on the device instead and computes every
        geometric candidate, keeping the selected one: no host decision at all, so the call can be
        captured in a CUDA graph (the same distribution of transforms, a different stream of draws).
        """
        draw = _Draw(x, shared, generator)
        if "flip" in self.tokens:
            x = _flip(x, draw.uniform() < self.flip_p)
        if "color" in self.tokens:
            x = _brightness(x, (draw.uniform() - 0.5) * self.brightness)
            x = _saturation(x, draw.uniform() * self.saturation)
            x = _contrast(x, draw.uniform() + self.contrast)
        if self.geometric and static:
            x = self._random_geometric_static(x, draw)
        elif self.geometric:
            if choice_generator is None:
                pick = torch.randint(len(self.geometric), (1,), generator=generator, device=x.device)
            else:
                pick = torch.randint(len(self.geometric), (1,), generator=choice_generator)
            x = getattr(self, f"_random_{self.geometric[int(pick.item())]}")(x, draw)
        if "cutout" in self.tokens:
            h, w = x.shape[-2:]
            size = round(self.cutout_ratio * h)
            # Centre ranges are symmetric: an even box may hang half outside on either side.
            cy = draw.integers(0, h + 1 - size % 2)
            cx = draw.integers(0, w + 1 - size % 2)
            x = _cutout(x, cy, cx, size)
        return x

    def _random_geometric_static(self, x: Tensor, draw: _Draw) -> Tensor:
        """One geometric op per call, picked by a device draw; every candidate is computed (in TOKENS order).

        With a single geometric token no pick is drawn, so the draws equal those of the host path picking
        with a ``choice_generator``.
        """
        candidates = [getattr(self, f"_random_{op}")(x, draw) for op in self.geometric]
        if len(candidates) == 1:
            return candidates[0]
        pick = torch.randint(len(candidates), (1,), generator=draw.generator, device=x.device)
        out = candidates[0]
        for i, candidate in enumerate(candidates[1:], start=1):
            out = torch.where(pick == i, candidate, out)
        return out

    def _random_crop(self, x: Tensor, draw: _Draw) -> Tensor:
        """Integer shift of up to +-round(crop_ratio * side) pixels."""
        dy, dx = round(self.crop_ratio * x.shape[-2]), round(self.crop_ratio * x.shape[-1])
        return _crop(x, draw.integers(-dx, dx + 1), draw.integers(-dy, dy + 1))

    def _random_scale(self, x: Tensor, draw: _Draw) -> Tensor:
        """Independent sx, sy ~ U[1/scale, scale]."""
        low = 1.0 / self.scale
        return _scale(x, low + draw.uniform() * (self.scale - low), low + draw.uniform() * (self.scale - low))

    def _random_rotate(self, x: Tensor, draw: _Draw) -> Tensor:
        """Angle ~ U[-rotate_deg, rotate_deg] degrees."""
        return _rotate(x, (draw.uniform() - 0.5) * 2 * math.radians(self.rotate_deg))

    def _random_translate(self, x: Tensor, draw: _Draw) -> Tensor:
        """Sub-pixel shift of up to crop_ratio of the side (DSA defines no range of its own for it)."""
        span = 2 * 2 * self.crop_ratio  # normalised width 2 times crop_ratio, both directions
        return _translate(x, (draw.uniform() - 0.5) * span, (draw.uniform() - 0.5) * span)


def _sample_lam(beta: float, generator: torch.Generator | None, device: torch.device) -> float:
    """Draw lam ~ Beta(beta, beta); Beta(1, 1) = U(0, 1), so the common case honours ``generator``.

    For beta != 1 ``torch.distributions.Beta`` draws from the global RNG (no generator hook).
    """
    if beta == 1.0:
        return float(torch.rand(1, generator=generator, device=device).item())
    return float(torch.distributions.Beta(beta, beta).sample().item())


def cutmix(
    x: Tensor, y: Tensor, *, beta: float = 1.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Paste one box from a permuted partner into every image (standard CutMix).

    Returns (x_mixed, y_a, y_b, lam) with lam the exact fraction of pixels each image keeps
    after clipping the box, so ``cutmix_loss`` weights the two labels by visible area.
    All draws use ``generator`` except lam when ``beta != 1``, which comes from the global RNG. The
    draws happen on the generator's device (pass a CPU generator for GPU data: the box is read on the
    host, and drawing it there avoids a device sync every step).
    """
    b, _, h, w = x.shape
    draw_device = generator.device if generator is not None else torch.device("cpu")
    lam = _sample_lam(beta, generator, draw_device)
    perm = torch.randperm(b, generator=generator, device=draw_device).to(x.device)
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut), int(w * cut)
    centre = torch.randint(0, h * w, (1,), generator=generator, device=draw_device).item()
    cy, cx = divmod(int(centre), w)
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    box = torch.zeros(h, w, dtype=torch.bool, device=x.device)
    box[y0:y1, x0:x1] = True
    x_mixed = torch.where(box, x[perm], x)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return x_mixed, y, y[perm], lam


def cutmix_static(
    x: Tensor, y: Tensor, p: float, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CutMix with probability ``p`` (Beta(1, 1)), every draw and decision on ``x``'s device.

    The same box arithmetic as :func:`cutmix` and the same first three draws (lam, partner permutation,
    centre), then one more for "apply at all"; where it is not applied the box is empty and lam is 1, so
    :func:`cutmix_loss` is plain cross-entropy. No value is read on the host, so the call can be captured
    in a CUDA graph. Returns (x_mixed, y_a, y_b, lam) with lam a 0-d tensor.
    """
    b, _, h, w = x.shape
    lam = torch.rand(1, generator=generator, device=x.device)
    perm = torch.randperm(b, generator=generator, device=x.device)
    centre = torch.randint(0, h * w, (1,), generator=generator, device=x.device)
    apply = torch.rand(1, generator=generator, device=x.device) < p
    cut = (1.0 - lam.double()).sqrt()  # float64, as the host version's math.sqrt
    cut_h, cut_w = (h * cut).floor().long(), (w * cut).floor().long()
    cy, cx = centre // w, centre % w
    y0, y1 = (cy - cut_h // 2).clamp(min=0), (cy + cut_h // 2).clamp(max=h)
    x0, x1 = (cx - cut_w // 2).clamp(min=0), (cx + cut_w // 2).clamp(max=w)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    box = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :] & apply
    x_mixed = torch.where(box, x[perm], x)
    area = ((y1 - y0).clamp(min=0) * (x1 - x0).clamp(min=0)).to(x.dtype)
    lam = (1.0 - area * apply.to(x.dtype) / (h * w)).squeeze(0)
    return x_mixed, y, y[perm], lam


def cutmix_loss(logits: Tensor, y_a: Tensor, y_b: Tensor, lam: float | Tensor) -> Tensor:
    """Area-weighted cross-entropy: lam * CE(y_a) + (1 - lam) * CE(y_b)."""
    return lam * F.cross_entropy(logits, y_a) + (1.0 - lam) * F.cross_entropy(logits, y_b)
