"""ResNet-10 (cross-architecture evaluation) and ResNetAP-10 (ImageNet matching network)."""

import math

import torch
from torch import Tensor, nn

from dream_pl.models.convnet import check_norm, make_norm
from dream_pl.models.registry import register_model

RESNET_NORMS = ("batch", "instance")
RESNETAP_NORMS = ("batch", "instance", "none")


def he_std(kernel_size: int, out_channels: int) -> float:
    """He-normal std used by the reference: sqrt(2 / (k * k * out_channels))."""
    return math.sqrt(2.0 / (kernel_size * kernel_size * out_channels))


def he_normal_init(model: nn.Module) -> None:
    """He-normal conv weights, zero conv biases, norm weight 1 and bias 0 (reference init)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            std = he_std(module.kernel_size[0], module.out_channels)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut; downsamples by a strided conv or, with ``pool``, AvgPool.

    The AvgPool variant (ResNetAP) keeps every conv at stride 1 and pools right after the first
    conv and the 1x1 shortcut conv, which avoids the aliasing of strided convs on small images.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int, norm: str, pool: bool, bias: bool
    ) -> None:
        super().__init__()
        conv_stride = 1 if pool else stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=conv_stride, padding=1, bias=bias)
        self.pool1 = nn.AvgPool2d(stride) if pool and stride > 1 else nn.Identity()
        self.norm1 = make_norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.norm2 = make_norm(norm, out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=conv_stride, bias=bias),
                nn.AvgPool2d(stride) if pool and stride > 1 else nn.Identity(),
                make_norm(norm, out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Residual output ``[B, out_channels, H / stride, W / stride]``."""
        out = self.relu(self.norm1(self.pool1(self.conv1(x))))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, four one-block stages (stride 1, 2, 2, 2), global average pool, linear head."""

    def __init__(
        self,
        *,
        stem: nn.Module,
        stem_channels: int,
        widths: tuple[int, int, int, int],
        num_classes: int,
        norm: str,
        pool: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.stem = stem
        stages: list[nn.Module] = []
        in_channels = stem_channels
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            stages.append(BasicBlock(in_channels, width, stride=stride, norm=norm, pool=pool, bias=bias))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        # Adaptive pooling instead of the reference's fixed AvgPool so any input size works.
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = widths[-1]
        self.fc = nn.Linear(self.embed_dim, num_classes)
        he_normal_init(self)

    def embed(self, x: Tensor) -> Tensor:
        """Globally pooled last-stage features ``[B, embed_dim]``."""
        # x: [B, C, H, W] -> [B, widths[-1], h, w] -> [B, widths[-1]]
        return torch.flatten(self.global_pool(self.stages(self.stem(x))), start_dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]``."""
        return self.fc(self.embed(x))


def make_stem(
    channels: int,
    width: int,
    *,
    kernel_size: int,
    stride: int,
    norm: str,
    bias: bool,
    pool: nn.Module,
) -> nn.Sequential:
    """Conv -> norm -> ReLU -> ``pool``; the variants differ only in kernel, stride and pool."""
    return nn.Sequential(
        nn.Conv2d(channels, width, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias),
        make_norm(norm, width),
        nn.ReLU(),
        pool,
    )


@register_model("resnet10", choices={"norm": RESNET_NORMS})
def resnet10(*, channels: int, num_classes: int, size: int, norm: str = "batch") -> ResNet:
    """ResNet-10 as the reference's ``resnet10_bn``, CIFAR branch for every size <= 32.

    The CIFAR branch (widths 32/64/128/256, 3x3 stem, no pooling) also serves 1-channel 28 px
    inputs. Larger inputs get ImageNet widths 64/128/256/512 and a stem that shrinks with size:
    3x3 without pooling up to 64 px, 3x3 + max pool up to 128 px, 7x7 stride 2 + max pool above.
    """
    check_norm(norm, RESNET_NORMS)
    widths = (32, 64, 128, 256) if size <= 32 else (64, 128, 256, 512)
    kernel_size, stride = (7, 2) if size > 128 else (3, 1)
    pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if size > 64 else nn.Identity()
    stem = make_stem(
        channels,
        widths[0],
        kernel_size=kernel_size,
        stride=stride,
        norm=norm,
        bias=False,
        pool=pool,
    )
    return ResNet(stem=stem, stem_channels=widths[0], widths=widths, num_classes=num_classes, norm=norm)


@register_model("resnetap10", choices={"norm": RESNETAP_NORMS})
def resnetap10(
    *, channels: int, num_classes: int, size: int, width: int = 64, norm: str = "instance"
) -> ResNet:
    """ResNetAP-10: ResNet-10 that downsamples by average pooling, instance norm by default.

    Convs carry a bias only without a norm layer (a norm's shift makes it redundant). Up to 64 px
    the stem is a 3x3 stride-1 conv without pooling; above, the reference's 224 px stem: 7x7
    stride-1 conv, norm, ReLU, AvgPool(4).
    """
    check_norm(norm, RESNETAP_NORMS)
    bias = norm == "none"
    if size <= 64:
        kernel_size, pool = 3, nn.Identity()
    else:
        kernel_size, pool = 7, nn.AvgPool2d(4)
    stem = make_stem(channels, width, kernel_size=kernel_size, stride=1, norm=norm, bias=bias, pool=pool)
    widths = (width, 2 * width, 4 * width, 8 * width)
    return ResNet(
        stem=stem,
        stem_channels=width,
        widths=widths,
        num_classes=num_classes,
        norm=norm,
        pool=True,
        bias=bias,
    )
