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


def held_out(rs: RealSet, per_class: int, seed: int) -> list[Tensor]:
    """The validation split: ``per_class`` seeded random images of each class (indices within the class).

    Held out of the training set for whatever evaluation chooses (``evaluation.lr=auto``), so nothing is
    chosen on the test set; each class keeps at least one image for the baselines.
    """
    for c, size in enumerate(rs.class_sizes):
        if per_class >= size:
            raise SetMismatchError(
                f"evaluation.validation_per_class={per_class} holds out every image of class {c} "
                f"({size} images); allowed: 1 .. {min(rs.class_sizes) - 1}"
            )
    return [
        torch.randperm(size, generator=generator(seed, "validation", c))[:per_class]
        for c, size in enumerate(rs.class_sizes)
    ]


def validation_set(real: RealData, per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    """The images and labels of :func:`held_out` (uint8, as the test set is handed to the evaluator)."""
    rs = RealSet.from_data(real, "train")
    split = held_out(rs, per_class, seed)
    images = torch.cat([rs.images[rs.class_slice(c)][idx] for c, idx in enumerate(split)])
    return images, torch.arange(rs.num_classes).repeat_interleave(per_class)


def _kept(size: int, excluded: Tensor | None) -> Tensor:
    """Indices of a class's images that are not ``excluded``."""
    keep = torch.ones(size, dtype=torch.bool)
    if excluded is not None:
        keep[excluded] = False
    return keep.nonzero().squeeze(1)


def baseline_set(
    name: str,
    real: RealData,
    ipc: int,
    *,
    seed: int = 0,
    net: nn.Module | None = None,
    exclude: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """``ipc`` real images per class chosen at random / by herding / by k-center, or the whole set.

    Herding and k-center select on ``net``'s features (the caller decides how that network was trained).
    The whole set is the dataset's own uint8 images (no copy): the evaluator turns them into the same pixels
    a batch at a time, so 60,000 images never sit in memory as floats. ``exclude``: per class, images no
    baseline may use (the validation split, :func:`held_out`).
    """
    if name not in BASELINES:
        raise ValueError(f"baseline {name!r} is not one of {', '.join(BASELINES)}")
    if name == "whole" and exclude is None:
        return real.train_images, real.train_labels.clone()
    rs = RealSet.from_data(real, "train")
    g = generator(seed, "baseline", name)
    picks = []
    for c in range(rs.num_classes):
        kept = _kept(rs.class_sizes[c], None if exclude is None else exclude[c])
        if name != "whole" and len(kept) < ipc:
            raise SetMismatchError(
                f"the {name} baseline needs {ipc} images of class {c}, but {len(kept)} are left beside the "
                "validation split; lower evaluation.validation_per_class "
                f"(allowed: 1 .. {rs.class_sizes[c] - ipc})"
            )
        if name == "whole":
            idx = torch.arange(len(kept))
        elif name == "random":
            idx = torch.randperm(len(kept), generator=g)[:ipc]
        else:
            if net is None:
                raise ValueError(f"the {name} baseline needs a feature network")
            feats = embed_class(net, rs, c)[kept]
            idx = (
                herding(feats, ipc)
                if name == "herding"
                else kcenter(feats, ipc, seed=derive(seed, "kcenter", c))
            )
        picks.append(rs.images[rs.class_slice(c)][kept[idx]])
    if name == "whole":
        return torch.cat(picks), torch.cat([torch.full((len(p),), c) for c, p in enumerate(picks)])
    images = torch.cat(picks).float() / 255
    labels = torch.arange(rs.num_classes).repeat_interleave(ipc)
    return images, labels
