"""One distilled set through every reader of ``dream_pl.evaluate format=...``: same pixels, same accuracy.

Takes one of this project's sets (``synthetic.pt``, multi-formation stored images kept beside the decoded
ones), writes it as each codebase's save call does (the calls are quoted in tests/test_formats.py, which
fabricates the same files on mnist_5k):

  idc / dream   ``torch.save([stored, targets], 'data.pt' / 'data<it>.pt')``: pixel-space stored images
                (multi-formation factor f)
  dc / dsa / dm ``torch.save({'data': [[images, labels]], ...}, 'res_<M>_<D>_ConvNet_<n>ipc.pt')``: the
                decoded images, normalised with the dataset's mean and std (f 1: n = ipc x f^2)
  mtt           ``images_<it>.pt`` / ``labels_<it>.pt``: the decoded images, normalised
  folder        one 8-bit PNG per decoded image, a sub-folder per class

then reads each back through ``read_set`` (the evaluate command's reader) and evaluates it with
``dream_pl.evaluate`` under one protocol and seed. Reported per format: the largest pixel difference to the
original decoded images and the accuracy. Exact formats must give the original's accuracy to the last digit
(the same pixels, the same seeded training); the PNG folder is quantised to 8 bits.
Run: python benchmarks/format_round_trip.py <run>/synthetic.pt [--out docs/formats] [overrides]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from dream_pl.config import CONF_DIR
from dream_pl.data.specs import get_spec
from dream_pl.evaluation.formats import DC_DATASETS, read_set
from dream_pl.synthetic import load_synthetic
from dream_pl.workflow import evaluate

DC_NAMES = {name: key for key, names in DC_DATASETS.items() for name in names}


def write_all(src: Path, folder: Path) -> dict[str, tuple[Path, list[str]]]:
    """The set at ``src`` in every format under ``folder``: format -> (path, its evaluate options)."""
    data = load_synthetic(src)
    spec = get_spec(data.dataset)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    normalised = (data.images - mean) / std
    classes = int(data.labels.max()) + 1
    targets = torch.arange(classes).repeat_interleave(len(data.stored) // classes)
    per_class = len(data.labels) // classes
    out: dict[str, tuple[Path, list[str]]] = {"dream_pl": (src, [])}
    for fmt, name in (("idc", "data.pt"), ("dream", "data1000.pt")):
        (folder / fmt).mkdir(parents=True)
        torch.save([data.stored.detach().cpu(), targets], folder / fmt / name)
        out[fmt] = (folder / fmt / name, [f"factor={data.factor}"])
    for method in ("dc", "dsa", "dm"):
        path = folder / f"res_{method.upper()}_{DC_NAMES[data.dataset]}_ConvNet_{per_class}ipc.pt"
        blob = {"data": [[normalised.clone(), data.labels.clone()]], "accs_all_exps": {"ConvNet": [0.0]}}
        torch.save(blob, path)
        out[method] = (path, [])
    (folder / "mtt").mkdir()
    torch.save(normalised.clone(), folder / "mtt" / "images_best.pt")
    torch.save(data.labels.clone(), folder / "mtt" / "labels_best.pt")
    out["mtt"] = (folder / "mtt" / "images_best.pt", [])
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        target = folder / "pngs" / f"class_{int(label):03d}"
        target.mkdir(parents=True, exist_ok=True)
        array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
        Image.fromarray(array).save(target / f"{i:04d}.png")
    out["folder"] = (folder / "pngs", [])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("synthetic", help="a synthetic.pt of this project (stored images kept)")
    parser.add_argument("--out", default="docs/formats")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of every evaluation (the protocol)")
    args = parser.parse_intermixed_args()
    src = Path(args.synthetic)
    original = load_synthetic(src)
    lines = [
        f"set: {src} ({original.dataset}, {len(original.labels)} decoded images, factor {original.factor}); "
        f"protocol overrides: {' '.join(args.overrides) or 'none'}",
        "",
        "| format | file | largest pixel difference | top-1 (%) | per repeat |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, (path, options) in write_all(src, Path(tmp)).items():
            read = read_set(path, fmt, get_spec(original.dataset), factor=original.factor)
            mine, theirs = (torch.argsort(d.labels, stable=True) for d in (original, read))
            diff = float((read.images[theirs] - original.images[mine]).abs().max())
            overrides = [
                f"synthetic={path}", f"format={fmt}", *options, f"dataset={original.dataset}",
                f"out_dir={Path(tmp) / 'eval' / fmt}", "evaluation.baseline=false", "logger=none",
                "trainer.enable_progress_bar=false", *args.overrides,
            ]  # fmt: skip
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose("eval", overrides=overrides)
            row = next(r for r in evaluate(cfg) if r["set"] != "whole real set")
            accs = ", ".join(f"{100 * a:.2f}" for a in row["accuracies"])
            acc = f"{row['mean']:.2f} ± {row['std']:.2f}"
            lines.append(f"| {fmt} | {path.name} | {diff:.2e} | {acc} | {accs} |")
            print(lines[-1], flush=True)
    report = "\n".join(lines) + "\n"
    print(report)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "round_trip.md").write_text(report)


if __name__ == "__main__":
    main()
