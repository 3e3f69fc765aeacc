"""Embedding a class's real images with the matching network, in bounded memory.

This pass, not K-means, dominates DREAM's clustering cost on a CPU (docs/benchmarks.md): it runs under
``torch.inference_mode`` in chunks, in channels_last layout on the CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dream_pl.data import RealSet

FEATURE_INPUTS = ("normalized", "pixels")


def embed_class(
    net: nn.Module,
    real: RealSet,
    c: int,
    *,
    indices: Tensor | None = None,
    chunk: int = 512,
    inputs: str = "normalized",
) -> Tensor:
    """Penultimate features ``net.embed`` of class ``c``'s real images: [M, D] float32.

    Args:
        net: the matching network (its train/eval mode is left untouched; batch-norm nets are
            embedded in eval mode, so running statistics are not updated by this pass).
        real: the real training set.
        c: the class.
        indices: within-class indices to embed (default: the whole class).
        chunk: images per forward pass.
        inputs: ``normalized`` (what the matching sees) or ``pixels`` (raw [0, 1] pixels, as the
            authors' clustering embeds them).
    """
    if inputs not in FEATURE_INPUTS:
        raise ValueError(f"unknown feature inputs {inputs!r}; allowed: {', '.join(FEATURE_INPUTS)}")
    idx = torch.arange(real.class_sizes[c], device=real.images.device) if indices is None else indices
    was_training = net.training
    net.eval()
    channels_last = real.images.device.type == "cpu"
    out = []
    with torch.inference_mode():
        for part in idx.split(chunk):
            block = real.images[real.class_slice(c)][part]
            x = real.normalize(block) if inputs == "normalized" else real.to_pixels(block)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(net.embed(x).float())
    net.train(was_training)
    return torch.cat(out)
