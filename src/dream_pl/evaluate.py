"""Evaluation entry point: ``python -m dream_pl.evaluate synthetic=<synthetic.pt | run dir | baseline>``.

Trains fresh networks on the set with the paper's protocol and reports final-epoch test accuracy,
mean ± std over repeats, beside a random-real-images set of the same size evaluated the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from dream_pl.config import check_model_block, check_overrides, validate_evaluation
from dream_pl.data import load_dataset
from dream_pl.evaluation.sets import BASELINES, DISTILLED, baseline_label, baseline_set, load_set
from dream_pl.evaluation.suite import evaluate_sets, network_for
from dream_pl.evaluation.tables import eval_metrics, write_report
from dream_pl.runner import make_loggers, output_dir, report_user_errors


def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Resolve the set(s), evaluate them, write ``eval.json``."""
    validate_evaluation(cfg.evaluation)
    check_model_block(cfg.model)
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
        net = network_for(cfg, real.spec)()
        sets[baseline_label(target, cfg.ipc)] = baseline_set(target, real, cfg.ipc, seed=cfg.seed, net=net)
    else:
        synthetic = load_set(target, real)
        sets[DISTILLED] = (synthetic.images, synthetic.labels)
        if cfg.evaluation.baseline:
            ipc = synthetic.ipc
            sets[baseline_label("random", ipc)] = baseline_set("random", real, ipc, seed=cfg.seed)
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
