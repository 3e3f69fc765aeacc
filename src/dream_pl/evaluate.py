"""Evaluation entry point: ``python -m dream_pl.evaluate synthetic=<synthetic.pt | run dir | baseline>``.

Trains fresh networks on the set with the paper's protocol and reports final-epoch test accuracy,
mean ± std over repeats, beside a random-real-images set of the same size evaluated the same way.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dream_pl.config import check_overrides, dataclass_knobs, validate_evaluation
from dream_pl.data import RealData, load_dataset
from dream_pl.evaluation import EvalProtocol, EvalResult, evaluate_set
from dream_pl.evaluation.sets import BASELINES, baseline_set, load_set
from dream_pl.models import create_model
from dream_pl.runner import make_loggers, output_dir, report_user_errors


def protocol_from(ev: DictConfig) -> EvalProtocol:
    """The ``evaluation`` config block as an :class:`EvalProtocol`."""
    return EvalProtocol(**dataclass_knobs(EvalProtocol, ev) | {"lr_milestones": tuple(ev.lr_milestones)})


def model_factory(cfg: DictConfig, name: str, real: RealData) -> partial[nn.Module]:
    """Builder for architecture ``name``; the ``model`` group's knobs apply when it names the same one."""
    spec = real.spec
    knobs = {}
    if cfg.get("model") is not None and cfg.model.name == name:
        knobs = {
            k: v
            for k, v in OmegaConf.to_container(cfg.model).items()
            if not k.startswith("_") and k != "name"
        }
    return partial(
        create_model,
        name,
        channels=spec.channels,
        num_classes=spec.num_classes,
        size=spec.size,
        **knobs,
    )


def set_evaluator(cfg: DictConfig, name: str, real: RealData) -> Callable[..., EvalResult]:
    """``(images, labels, protocol) -> EvalResult``: architecture ``name`` tested on ``real``'s test set."""
    return partial(
        evaluate_set,
        model_factory(cfg, name, real),
        test=(real.test_images, real.test_labels),
        model=name,
        mean=real.spec.mean,
        std=real.spec.std,
        num_classes=real.spec.num_classes,
        seed=cfg.seed,
        accelerator=cfg.trainer.accelerator,
    )


def evaluate_sets(cfg: DictConfig, real: RealData, sets: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (architecture, set) pair under the configured protocol; rows for a table."""
    protocol = protocol_from(cfg.evaluation)
    rows = []
    for name in cfg.evaluation.models:
        run = set_evaluator(cfg, name, real)
        for label, (images, labels) in sets.items():
            rows.append({"set": label, **run(images, labels, protocol=protocol).as_dict()})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one line per (set, model), with the protocol once underneath."""
    lines = ["| set | model | images | top-1 (%) | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['model']} | {r['images']} "
            f"| {r['mean']:.1f} ± {r['std']:.1f} | {r['seconds']:.0f} |"
        )
    baselines = {r["model"]: r for r in rows if r["set"].startswith("random")}
    for r in rows:
        base = baselines.get(r["model"])
        if base is not None and r is not base:
            gain = r["mean"] - base["mean"]
            lines.append(f"\n{r['set']} vs {base['set']} ({r['model']}): {gain:+.1f} points")
    if rows:
        lines.append(f"\nprotocol: {rows[0]['protocol']}")
    return "\n".join(lines)


def eval_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Logger keys of the evaluated rows: ``eval/<model>/<set>/acc`` -> mean accuracy."""
    return {f"eval/{r['model']}/{r['set']}/acc": r["mean"] for r in rows}


def write_report(rows: list[dict[str, Any]], out: Path) -> Path:
    """``eval.json`` with every row, and the table printed."""
    path = out / "eval.json"
    path.write_text(json.dumps(rows, indent=2))
    print(format_table(rows))
    return path


def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Resolve the set(s), evaluate them, write ``eval.json``."""
    validate_evaluation(cfg.evaluation)
    target = str(cfg.synthetic)
    if target not in BASELINES and not Path(target).exists():
        raise FileNotFoundError(
            f"synthetic={target} does not exist; give a synthetic.pt, a run directory, "
            f"or one of {', '.join(BASELINES)}"
        )
    out = output_dir(cfg)
    pl.seed_everything(cfg.seed, verbose=False)
    real = load_dataset(cfg.dataset.name, cfg.data_dir, **cfg.dataset.get("options", {}))
    sets: dict[str, Any] = {}
    if target in BASELINES:
        net = instantiate(cfg.model)(
            channels=real.spec.channels, num_classes=real.spec.num_classes, size=real.spec.size
        )
        sets[target] = baseline_set(target, real, cfg.ipc, seed=cfg.seed, net=net)
    else:
        synthetic = load_set(target, real)
        sets["synthetic"] = (synthetic.images, synthetic.labels)
        if cfg.evaluation.baseline:
            ipc = synthetic.ipc
            sets[f"random (ipc {ipc})"] = baseline_set("random", real, ipc, seed=cfg.seed)
    rows = evaluate_sets(cfg, real, sets)
    write_report(rows, out)
    for logger in make_loggers(cfg, out, job_type="eval"):
        logger.log_metrics(eval_metrics(rows), step=0)
        logger.finalize("success")
    return rows


def expand_model_list(argv: list[str]) -> list[str]:
    """``model=a,b`` in one (non-multirun) call means: evaluate every listed architecture."""
    if "-m" in argv or "--multirun" in argv:
        return argv
    out = []
    for arg in argv:
        if arg.startswith("model=") and "," in arg:
            names = arg.split("=", 1)[1].split(",")
            out += [f"model={names[0]}", f"evaluation.models=[{','.join(names)}]"]
        else:
            out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    report_user_errors(lambda: evaluate(cfg))


def main() -> None:
    """Console entry: one-line errors for unknown options, ``model=a,b`` expansion, then Hydra."""
    sys.argv[1:] = expand_model_list(sys.argv[1:])
    report_user_errors(lambda: check_overrides(sys.argv[1:]))
    _hydra_main()


if __name__ == "__main__":
    main()
