"""CIFAR-style "DenseNet-121" (growth 12) used for cross-architecture evaluation."""

import torch
from torch import Tensor, nn

from dream_pl.models.registry import register_model


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv to ``4 * growth``, BN-ReLU-3x3 conv to ``growth``, concat with input."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        inner = 4 * growth
        self.layers = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, inner, kernel_size=1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(),
            nn.Conv2d(inner, growth, kernel_size=3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C + growth, H, W]``."""
        return torch.cat([self.layers(x), x], dim=1)


def transition(in_channels: int, out_channels: int) -> nn.Sequential:
    """BN-ReLU-1x1 conv then AvgPool(2): compresses channels and halves the resolution."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.AvgPool2d(2),
    )


class DenseNet(nn.Module):
    """Dense blocks separated by transitions, then BN-ReLU, global average pool and linear.

    Unlike the reference (3-channel CIFAR only) the stem accepts any channel count, and the
    reference's fixed AvgPool(4) head is an adaptive global pool so 28 and 64 px inputs work;
    at 32 px the two are identical. PyTorch default initialisation, as in the reference.
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        blocks: tuple[int, ...] = (6, 12, 24, 16),
        growth: int = 12,
        reduction: float = 0.5,
    ) -> None:
        super().__init__()
        width = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=False)]
        for index, num_layers in enumerate(blocks):
            for _ in range(num_layers):
                layers.append(Bottleneck(width, growth))
                width += growth
            if index < len(blocks) - 1:
                compressed = int(width * reduction)
                layers.append(transition(width, compressed))
                width = compressed
        layers += [nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.embed_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Globally pooled features ``[B, embed_dim]`` (384 for the default configuration)."""
        # x: [B, C, H, W] -> [B, embed_dim, 1, 1] -> [B, embed_dim]
        return torch.flatten(self.features(x), start_dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]``."""
        return self.classifier(self.embed(x))


@register_model("densenet121", maxima={"reduction": 1.0})
def densenet121(
    *, channels: int, num_classes: int, size: int, growth: int = 12, reduction: float = 0.5
) -> DenseNet:
    """DenseNet-121 block counts [6, 12, 24, 16] with growth 12; ``size`` is not needed."""
    del size
    return DenseNet(channels=channels, num_classes=num_classes, growth=growth, reduction=reduction)
