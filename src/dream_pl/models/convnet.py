"""ConvNet from DC/DSA/IDC/DREAM: the matching and default evaluation network."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream_pl.models.registry import register_model

NORMS = ("batch", "group", "instance", "layer", "none")


def check_norm(norm: str, allowed: tuple[str, ...]) -> None:
    """Reject a norm name a model does not support.

    Raises:
        ValueError: if ``norm`` is not in ``allowed``; the message lists the allowed values.
    """
    if norm not in allowed:
        raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(sorted(allowed))}")


def make_norm(norm: str, channels: int) -> nn.Module:
    """Normalisation layer by name, shared by all models of the zoo.

    ``instance`` is ``GroupNorm(C, C)`` with affine, as the reference uses: per-sample statistics
    keep gradient matching independent of the batch composition. ``layer`` is ``GroupNorm(1, C)``,
    i.e. statistics over (C, H, W) with a per-channel (not per-element) affine, so the layer does
    not depend on the spatial size. ``group`` is ``GroupNorm(4, C)``.

    Raises:
        ValueError: if ``norm`` is not one of ``NORMS``.
    """
    check_norm(norm, NORMS)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "layer":
        return nn.GroupNorm(1, channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(4, channels, affine=True)
    return nn.Identity()


def feature_side(size: int, depth: int) -> int:
    """Side of the last feature map: 28 px inputs are padded to 32, then halved ``depth`` times."""
    padded = 32 if size == 28 else size
    return padded // 2**depth


def mean_pool2(x: Tensor) -> Tensor:
    """``AvgPool2d(2, 2)`` as a reshape and a mean: [..., H, W] -> [..., H // 2, W // 2].

    Odd sides drop their last row/column, as ``AvgPool2d`` does.
    """
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    x = x[..., : 2 * h, : 2 * w]
    return x.unflatten(-1, (w, 2)).unflatten(-3, (h, 2)).mean(dim=(-3, -1))


class MeanPool2(nn.Module):
    """ConvNet's 2x2 average pooling: :func:`mean_pool2` on a GPU under autograd, ``avg_pool2d`` elsewhere.

    Gradient matching differentiates through the pooling twice; CUDA's ``avg_pool2d`` backward kernel was
    15% of an H200 matching step (benchmarks/profile_step.py), while a mean's backward is one broadcast.
    Without autograd (the clustering's embedding pass) the mean's reduction kernel is the slower one, and
    on a CPU both directions are (a FashionMNIST step: 6.9 s vs 5.7 s), so ``avg_pool2d`` runs there.
    """

    def forward(self, x: Tensor) -> Tensor:
        """[..., H, W] -> [..., H // 2, W // 2]."""
        if x.is_cuda and torch.is_grad_enabled():
            return mean_pool2(x)
        return F.avg_pool2d(x, 2, 2)


class ConvNet(nn.Module):
    """``depth`` blocks of Conv3x3 -> norm -> ReLU -> 2x2 average pooling, then one linear layer.

    PyTorch default initialisation, as in the reference. No in-place ops, so the model works
    under ``torch.func.functional_call`` and ``vmap``.
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        size: int,
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        side = feature_side(size, depth)
        if depth < 1 or side < 1:
            raise ValueError(f"depth {depth} does not fit {size} px inputs")
        blocks: list[nn.Module] = []
        in_channels = channels
        for index in range(depth):
            # The reference pads the first conv by 3 so 28 px maps to 32 px.
            padding = 3 if index == 0 and size == 28 else 1
            blocks += [
                nn.Conv2d(in_channels, width, kernel_size=3, padding=padding),
                make_norm(norm, width),
                nn.ReLU(),
                MeanPool2(),
            ]
            in_channels = width
        self.features = nn.Sequential(*blocks)
        self.embed_dim = width * side * side
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Flattened last feature map, the classifier's input."""
        # x: [B, C, H, W] -> [B, width * side * side]
        return torch.flatten(self.features(x), start_dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]``."""
        return self.classifier(self.embed(x))


@register_model("convnet", choices={"norm": NORMS})
def convnet(
    *,
    channels: int,
    num_classes: int,
    size: int,
    width: int = 128,
    depth: int = 3,
    norm: str = "instance",
) -> ConvNet:
    """ConvNet-3 (width 128, instance norm) for 28/32 px datasets."""
    return ConvNet(channels=channels, num_classes=num_classes, size=size, width=width, depth=depth, norm=norm)


@register_model("convnet4", choices={"norm": NORMS})
def convnet4(
    *,
    channels: int,
    num_classes: int,
    size: int,
    width: int = 128,
    depth: int = 4,
    norm: str = "instance",
) -> ConvNet:
    """ConvNet-4 for 64 px inputs (TinyImageNet): 64 -> 4 px, so 2048-d features at width 128."""
    return ConvNet(channels=channels, num_classes=num_classes, size=size, width=width, depth=depth, norm=norm)
