"""Synthetic sets saved by other codebases, read as this project's :class:`SyntheticData`.

``dream_pl.evaluate synthetic=<path> format=<name>`` trains on pixels, as it does on its own sets, so every
reader returns float images [N, C, H, W] in the pixel convention ([0, 1] nominally; never clamped, since a
learned image may lie outside) and long labels [N], tagged with the chosen dataset's mean and std. What each
codebase stores and how it is converted is in docs/evaluation.md ("Sets from other codebases"):

- ``dc`` / ``dsa`` / ``dm`` (VICO-UoE/DatasetCondensation): ``res_<method>_<dataset>_<model>_<ipc>ipc.pt``,
  ``{'data': [[images, labels], ...], 'accs_all_exps': ...}``, one pair per experiment, images normalised
  with that repository's mean and std;
- ``mtt`` (mtt-distillation): ``images_<it>.pt`` and ``labels_<it>.pt`` tensors, normalised the same way;
- ``idc`` / ``dream``: ``[images, labels]`` in ``data.pt`` / ``data<it>.pt``, stored pixel-space images that
  each hold factor x factor tiles, decoded as this project decodes its own;
- ``folder``: one sub-folder of PNG / JPEG files per class;
- ``dream_pl``: this project's ``synthetic.pt``.

Foreign ``.pt`` files are loaded with ``weights_only=True`` (tensors, lists, dicts and numpy scalars only):
a pickle can run code, and these files are often downloaded.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dream_pl.data import DatasetSpec, RealData
from dream_pl.errors import UserError
from dream_pl.evaluation.sets import SetMismatchError, check_fits
from dream_pl.synthetic import SyntheticData, decode, load_synthetic

log = logging.getLogger("dream_pl.evaluation")

Stats = tuple[tuple[float, ...], tuple[float, ...]]

# DatasetCondensation's utils.get_dataset normalises CIFAR-100 with its own statistics; every other dataset
# it knows (MNIST, FashionMNIST, SVHN, CIFAR10, TinyImageNet) uses the constants of dream_pl.data's specs.
# mtt-distillation's get_dataset uses this project's constants for every dataset (CIFAR-100 included).
DC_STATS: dict[str, Stats] = {"cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762))}
# The dataset part of a DatasetCondensation file name -> the dream_pl datasets it may be evaluated on.
DC_DATASETS = {
    "MNIST": ("mnist", "mnist_5k"),
    "FashionMNIST": ("fashion_mnist",),
    "SVHN": ("svhn",),
    "CIFAR10": ("cifar10",),
    "CIFAR100": ("cifar100",),
    "TinyImageNet": ("tiny_imagenet",),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# What synthetic= names for each format (said when it is missing or does not match).
EXPECTED = {
    "dream_pl": "a synthetic.pt or a run directory",
    "dc": "a dict {'data': [[images, labels], ...], 'accs_all_exps': ...} as DatasetCondensation's main.py "
    "and main_DM.py save in res_<method>_<dataset>_<model>_<ipc>ipc.pt",
    "mtt": "images_<it>.pt (a float tensor [N, C, H, W]) with labels_<it>.pt (a long tensor [N]) beside it, "
    "or their folder (images_best.pt, labels_best.pt), as mtt-distillation's distill.py saves them",
    "idc": "a list [images, labels] (float [N, C, H, W], long [N]) as IDC's condense.py saves in data.pt, "
    "or its folder",
    "folder": "a folder with one sub-folder of PNG / JPEG images per class",
}
EXPECTED["dsa"] = EXPECTED["dm"] = EXPECTED["dc"]
EXPECTED["dream"] = EXPECTED["idc"].replace(
    "IDC's condense.py saves in data.pt", "DREAM's condense.py saves in data<it>.pt"
)


class UnsupportedSetError(UserError):
    """A set in a format this project reads, saved in a variant it cannot evaluate faithfully."""


@dataclass(frozen=True)
class Request:
    """One read: the file or folder, its format, the dataset it is evaluated on and the format's options."""

    path: Path
    fmt: str
    spec: DatasetSpec
    factor: int = 1
    experiment_index: int = 0
    zca: bool = False

    def mismatch(self, why: str, where: Path | None = None) -> SetMismatchError:
        """The one-line refusal of a file that is not what its format writes."""
        return SetMismatchError(
            f"{where or self.path} is not a format={self.fmt} set: {why}; expected {EXPECTED[self.fmt]}"
        )

    def data(
        self, images: Tensor, labels: Tensor, *, factor: int = 1, stored: Tensor | None = None
    ) -> SyntheticData:
        """Pixel-space images and their labels as the dataset's set."""
        return SyntheticData(
            images.detach().float(),
            labels.long(),
            factor=factor,
            dataset=self.spec.name,
            mean=tuple(self.spec.mean),
            std=tuple(self.spec.std),
            stored=stored,
            config={"format": self.fmt, "source": str(self.path)},
        )


def _kind(value: object) -> str:
    """A short description of what a file held, for the refusal."""
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _numpy_globals() -> list:
    """The numpy scalars and dtypes a result file may hold, under numpy 1's and numpy 2's module names.

    DatasetCondensation's ``accs_all_exps`` holds numpy floats; nothing else numpy is allowed.
    """
    core = np._core if hasattr(np, "_core") else np.core
    scalar = core.multiarray.scalar
    classes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles a dtype's class too
    kinds = ("Float64DType", "Float32DType", "Int64DType", "Int32DType")
    dtypes = [getattr(classes, kind) for kind in kinds] if classes else []
    aliases = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
    return [scalar, *((scalar, alias) for alias in aliases), np.dtype, *dtypes]


def _load(req: Request, path: Path | None = None) -> object:
    """A ``.pt`` file's content, tensors on the CPU, without running any code the pickle names."""
    path = path or req.path
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5; before, numpy is refused
    try:
        with allow(_numpy_globals()) if allow else nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise req.mismatch(
            "it holds Python objects other than tensors, lists, dicts and numbers (not loaded: a pickle can "
            "run code)",
            path,
        ) from None
    except Exception as err:  # truncated or foreign files: every reader error means "not this format"
        reason = f"{type(err).__name__}: {err}".splitlines()[0].split(". ")[0]  # torch's first sentence
        raise req.mismatch(f"it cannot be read ({reason})", path) from None


def _pair(
    req: Request, images: object, labels: object, where: Path | None = None, labels_at: Path | None = None
) -> tuple[Tensor, Tensor]:
    """Float images [N, C, H, W] and integer labels [N] of one length, or a one-line refusal.

    ``where`` / ``labels_at``: the files holding them, where not ``req.path`` (MTT keeps labels apart).
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise req.mismatch(f"its images are {_kind(images)}, not a float tensor [N, C, H, W]", where)
    labels_at = labels_at or where
    integer = isinstance(labels, Tensor) and not labels.is_floating_point() and not labels.is_complex()
    if not integer or labels.dim() != 1 or labels.dtype == torch.bool:
        raise req.mismatch(f"its labels are {_kind(labels)}, not an integer tensor [N]", labels_at)
    if len(labels) != len(images) or not len(labels):
        raise req.mismatch(f"it holds {len(images)} images and {len(labels)} labels", labels_at)
    if int(labels.min()) < 0:
        raise req.mismatch(f"it has label {int(labels.min())}", labels_at)
    return images.detach().float(), labels.long()


def _unnormalise(images: Tensor, stats: Stats) -> Tensor:
    """Normalised images (torchvision's Normalize(mean, std)) back to pixels: x * std + mean.

    Images whose channels are not the dataset's are returned as they are: the shape check refuses them.
    """
    mean, std = (torch.tensor(s, dtype=images.dtype).view(1, -1, 1, 1) for s in stats)
    return images if images.shape[1] != len(stats[0]) else images * std + mean


def read_dream_pl(req: Request) -> SyntheticData:
    """This project's ``synthetic.pt`` (or a run directory holding it): already pixels, already decoded."""
    data = load_synthetic(req.path)
    data.images, data.labels = data.images.float(), data.labels.long()
    return data


def _check_dc_name(req: Request) -> None:
    """A ``res_<method>_<dataset>_<model>_<ipc>ipc.pt`` name says its dataset: refuse another one.

    CIFAR-10 and CIFAR-100 sets have one shape, so a set evaluated on the wrong one would pass every check.
    """
    named = re.fullmatch(r"res_[A-Za-z]+_([A-Za-z0-9]+)_.+_\d+ipc\.pt", req.path.name)
    fits = DC_DATASETS.get(named.group(1)) if named else None
    if fits and req.spec.name not in fits:
        raise SetMismatchError(
            f"{req.path} was distilled from {named.group(1)} (its name says so), not "
            f"dataset={req.spec.name}; pass dataset={fits[0]}"
        )


def read_dc(req: Request) -> SyntheticData:
    """DatasetCondensation's DC / DSA / DM result file: experiment ``experiment_index``, un-normalised."""
    blob = _load(req)
    runs = blob.get("data") if isinstance(blob, dict) else None
    if not isinstance(runs, list | tuple) or not runs:
        held = _kind(blob) if runs is None else f"'data' as {_kind(runs)}"
        raise req.mismatch(f"it holds {held}")
    _check_dc_name(req)
    i = req.experiment_index
    if i >= len(runs):
        raise SetMismatchError(
            f"experiment_index={i} is out of range: {req.path} holds {len(runs)} experiment(s); "
            f"allowed: 0..{len(runs) - 1}"
        )
    if not isinstance(runs[i], list | tuple) or len(runs[i]) != 2:
        raise req.mismatch(f"its experiment {i} is {_kind(runs[i])}, not [images, labels]")
    images, labels = _pair(req, *runs[i])
    stats = DC_STATS.get(req.spec.name, (req.spec.mean, req.spec.std))
    return req.data(_unnormalise(images, stats), labels)


def _mtt_files(req: Request) -> tuple[Path, Path]:
    """The images file and the labels file beside it (``images_X.pt`` -> ``labels_X.pt``)."""
    if req.path.is_dir():
        images = req.path / "images_best.pt"
        if not images.is_file():
            raise req.mismatch("it holds no images_best.pt")
    else:
        images = req.path
    named = re.fullmatch(r"images_(?:zca_)?(.+)\.pt", images.name)
    if not named:
        raise req.mismatch("its name is not images_<it>.pt, so its labels file cannot be found")
    labels = images.with_name(f"labels_{named.group(1)}.pt")
    if not labels.is_file():
        raise req.mismatch(f"{labels.name} (its labels) is not beside it")
    return images, labels


def read_mtt(req: Request) -> SyntheticData:
    """mtt-distillation's images / labels tensors: un-normalised, or already pixels (``images_zca_<it>``).

    With ``--zca`` MTT distils ZCA-whitened images; it also writes ``images_zca_<it>.pt``, the set mapped
    back by the fitted whitening's inverse (the input was pixels: no Normalize with ``--zca``).
    """
    images_path, labels_path = _mtt_files(req)
    back_in_pixels = images_path.name.startswith("images_zca_")
    if req.zca and not back_in_pixels:
        raise UnsupportedSetError(
            f"zca=true: ZCA-whitened sets ({images_path}) are not supported yet: the evaluator trains on "
            "pixels, and undoing the whitening needs the transform MTT fitted on the training set, which is "
            "not saved with the set; pass the images_zca_<it>.pt MTT writes with --zca (the set mapped back "
            "to pixels) instead"
        )
    images, labels = _pair(req, _load(req, images_path), _load(req, labels_path), images_path, labels_path)
    pixels = images if back_in_pixels else _unnormalise(images, (req.spec.mean, req.spec.std))
    return req.data(pixels, labels)


def _idc_file(req: Request) -> Path:
    """The data file: the path itself, or in its folder IDC's ``data.pt`` / DREAM's latest ``data<it>.pt``."""
    if not req.path.is_dir():
        return req.path
    if req.fmt == "idc":
        found = [req.path / "data.pt"] if (req.path / "data.pt").is_file() else []
    else:
        numbered = (p for p in req.path.glob("data*.pt") if re.fullmatch(r"data\d+\.pt", p.name))
        found = sorted(numbered, key=lambda p: int(p.stem.removeprefix("data")))
    if not found:
        raise req.mismatch(f"it holds no {'data.pt' if req.fmt == 'idc' else 'data<it>.pt'}")
    if req.fmt == "dream":
        log.info("format=dream: reading %s, the latest of %d saved sets", found[-1].name, len(found))
    return found[-1]


def decode_by_class(stored: Tensor, labels: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Each class's stored images decoded together (:func:`dream_pl.synthetic.decode`), classes ascending.

    For class-major blocks of ``ipc`` (what IDC and DREAM save) this is
    :func:`dream_pl.synthetic.decode_classes`; IDC's ``test.py`` decodes the same way, class by class.
    """
    classes = labels.unique(sorted=True).tolist()
    blocks = [decode(stored[labels == c], factor) for c in classes]
    decoded_labels = [
        torch.full((len(b),), c, dtype=torch.long) for b, c in zip(blocks, classes, strict=True)
    ]
    return torch.cat(blocks), torch.cat(decoded_labels)


def read_idc(req: Request) -> SyntheticData:
    """IDC's / DREAM's ``[images, labels]``: stored pixel-space images, decoded with ``factor``."""
    path = _idc_file(req)
    blob = _load(req, path)
    if not isinstance(blob, list | tuple) or len(blob) != 2:
        raise req.mismatch(f"it holds {_kind(blob)}", path)
    stored, labels = _pair(req, *blob, path)
    check_fits(req.data(stored, labels), req.spec, path)  # decoding needs the dataset's square images
    images, decoded_labels = decode_by_class(stored, labels, req.factor)
    return req.data(images, decoded_labels, factor=req.factor, stored=stored)


def _class_folders(req: Request) -> list[tuple[int, Path]]:
    """(class index, folder): integer names are the indices, other names count in sorted order."""
    folders = sorted((p for p in req.path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=str)
    k = req.spec.num_classes
    if len(folders) != k:
        raise req.mismatch(f"it holds {len(folders)} class folders, and {req.spec.name} has {k} classes")
    if all(re.fullmatch(r"\d+", p.name) for p in folders):
        indexed = sorted((int(p.name), p) for p in folders)
        if [i for i, _ in indexed] != list(range(k)):
            raise req.mismatch(f"its class folders are numbered {[i for i, _ in indexed]}, not 0..{k - 1}")
        return indexed
    return list(enumerate(folders))


def _read_image(req: Request, file: Path) -> Tensor:
    """One PNG / JPEG as a [C, H, W] float pixel tensor in the dataset's channels."""
    spec = req.spec
    try:
        with Image.open(file) as img:
            pixels = np.asarray(img.convert("L" if spec.channels == 1 else "RGB"))
    except (OSError, ValueError, SyntaxError) as err:  # PIL's refusals of damaged or foreign files
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        raise req.mismatch(f"it cannot be read as an image ({reason})", file) from None
    h, w = pixels.shape[:2]
    if (h, w) != (spec.size, spec.size):
        raise SetMismatchError(
            f"{file} is {w}x{h} pixels; {spec.name} needs {spec.size}x{spec.size} (format=folder does not "
            "resize)"
        )
    image = torch.from_numpy(pixels.copy()).float().div(255)
    return image.unsqueeze(0) if image.dim() == 2 else image.permute(2, 0, 1)


def read_folder(req: Request) -> SyntheticData:
    """Image files in one sub-folder per class, read with PIL, files in name order."""
    if not req.path.is_dir():
        raise req.mismatch("it is a file")
    images, labels = [], []
    for c, folder in _class_folders(req):
        files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        for file in files:
            if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                raise req.mismatch("it is not a PNG / JPEG file", file)
            images.append(_read_image(req, file))
        if not files:
            raise req.mismatch("the class folder holds no images", folder)
        labels += [c] * len(files)
    return req.data(torch.stack(images), torch.tensor(labels, dtype=torch.long))


FORMATS: dict[str, Callable[[Request], SyntheticData]] = {
    "dream_pl": read_dream_pl,
    "dc": read_dc,
    "dsa": read_dc,
    "dm": read_dc,
    "mtt": read_mtt,
    "idc": read_idc,
    "dream": read_idc,
    "folder": read_folder,
}
FACTOR_FORMATS = ("idc", "dream")  # the formats whose files hold multi-formation tiles (factor=)
EXPERIMENT_FORMATS = ("dc", "dsa", "dm")  # the formats whose files hold several experiments
ZCA_FORMATS = ("mtt",)  # the formats whose runs may whiten with ZCA


def read_set(
    path: str | Path,
    fmt: str,
    real: RealData | DatasetSpec,
    *,
    factor: int = 1,
    experiment_index: int = 0,
    zca: bool = False,
) -> SyntheticData:
    """The set saved at ``path`` in format ``fmt``: pixel images and labels, checked against the dataset.

    ``real`` is the loaded dataset, or only its spec: the command line's pre-check reads the set before any
    data loads, so a file that is not what its format writes is refused in seconds.

    Raises:
        SetMismatchError: the file is not what ``fmt`` writes, or does not fit the dataset.
        UnsupportedSetError: a variant of ``fmt`` that cannot be evaluated (MTT's ZCA-whitened sets).
        FileNotFoundError: nothing at ``path``.
    """
    if fmt not in FORMATS:
        raise UnsupportedSetError(f"format={fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
    spec = real if isinstance(real, DatasetSpec) else real.spec
    path = Path(path)
    if fmt != "dream_pl" and not path.exists():  # dream_pl's reader says what it expected itself
        raise FileNotFoundError(f"no set at {path} (format={fmt} reads {EXPECTED[fmt]})")
    data = FORMATS[fmt](Request(path, fmt, spec, factor, experiment_index, zca))
    check_fits(data, spec, path)
    return data
