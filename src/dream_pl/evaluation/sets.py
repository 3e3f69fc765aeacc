"""What can be evaluated: a saved synthetic set, or a baseline built from the real training set."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from dream_pl.coreset import herding, kcenter
from dream_pl.data import DatasetSpec, RealData, RealSet
from dream_pl.errors import UserError
from dream_pl.features import embed_class
from dream_pl.seeding import derive, generator
from dream_pl.synthetic import SyntheticData, load_synthetic

BASELINES = ("random", "herding", "kcenter", "whole")

# The set labels of eval.json, tables, logger keys and sweep reports: one vocabulary for every entry point.
DISTILLED = "distilled"  # a learned synthetic set
INITIALISATION = "initialisation"  # the synthetic set before the first step (synthetic_init.pt)
WHOLE = "whole real set"  # every training image (also the whole-set reference of IOR / HLR)


def baseline_label(name: str, ipc: int) -> str:
    """Label of a real-image baseline: ``random real (ipc 10)``, ..., ``whole real set``."""
    return WHOLE if name == "whole" else f"{name} real (ipc {ipc})"


def is_random_baseline(label: str) -> bool:
    """Whether ``label`` names random real images (the reference every gain is stated against)."""
    return label.startswith("random real")


class SetMismatchError(UserError, ValueError):
    """A synthetic set that does not fit the dataset it is evaluated on."""


def check_fits(data: SyntheticData, real: RealData | DatasetSpec, path: Path) -> None:
    """The set's image shape and classes must be the dataset's (``real``: the data, or only its spec)."""
    spec = real if isinstance(real, DatasetSpec) else real.spec
    expected = (spec.channels, spec.size, spec.size)
    if data.dataset and data.dataset != spec.name:
        raise SetMismatchError(f"{path} was distilled from {data.dataset!r}, not dataset={spec.name!r}")
    if tuple(data.images.shape[1:]) != expected:
        raise SetMismatchError(
            f"{path} holds images of shape {tuple(data.images.shape[1:])}; {spec.name} needs {expected}"
        )
    if len(data.labels) and int(data.labels.max()) >= spec.num_classes:
        raise SetMismatchError(
            f"{path} has label {int(data.labels.max())}; {spec.name} has classes 0..{spec.num_classes - 1}"
        )


def load_set(path: str | Path, real: RealData) -> SyntheticData:
    """A saved synthetic set (float pixel images, long labels), checked against the dataset."""
    data = load_synthetic(path)
    check_fits(data, real, Path(path))
    data.images, data.labels = data.images.float(), data.labels.long()
    return data


def baseline_set(
    name: str, real: RealData, ipc: int, *, seed: int = 0, net: nn.Module | None = None
) -> tuple[Tensor, Tensor]:
    """``ipc`` real images per class chosen at random / by herding / by k-center, or the whole set.

    Herding and k-center select on ``net``'s features (the caller decides how that network was trained).
    The whole set is the dataset's own uint8 images (no copy): the evaluator turns them into the same pixels
    a batch at a time, so 60,000 images never sit in memory as floats.
    """
    if name not in BASELINES:
        raise ValueError(f"baseline {name!r} is not one of {', '.join(BASELINES)}")
    if name == "whole":
        return real.train_images, real.train_labels.clone()
    rs = RealSet.from_data(real, "train")
    g = generator(seed, "baseline", name)
    picks = []
    for c in range(rs.num_classes):
        if name == "random":
            idx = torch.randperm(rs.class_sizes[c], generator=g)[:ipc]
        else:
            if net is None:
                raise ValueError(f"the {name} baseline needs a feature network")
            feats = embed_class(net, rs, c)
            idx = (
                herding(feats, ipc)
                if name == "herding"
                else kcenter(feats, ipc, seed=derive(seed, "kcenter", c))
            )
        picks.append(rs.images[rs.class_slice(c)][idx])
    images = torch.cat(picks).float() / 255
    labels = torch.arange(rs.num_classes).repeat_interleave(ipc)
    return images, labels
