"""Evaluation entry point: ``python -m dream_pl.evaluate synthetic=<synthetic.pt | run dir | baseline>``.

A set saved by another codebase is read with ``format=<dc|dsa|dm|mtt|idc|dream|folder>``
(:mod:`dream_pl.evaluation.formats`, docs/evaluation.md).

Trains fresh networks on the set with the paper's protocol and reports final-epoch test accuracy,
mean ± std over repeats, beside a random-real-images set of the same size evaluated the same way. The
config and the set's file are checked before Lightning is imported (:mod:`dream_pl.launch`); the work is
:func:`dream_pl.workflow.evaluate`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from dream_pl.launch import launch, prechecked, preflight_evaluate, run_job


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
    from dream_pl.workflow import evaluate  # Lightning: only once the config passed the pre-check

    run_job(cfg, lambda: evaluate(cfg, checked=prechecked()))


def main() -> None:
    """Console entry: ``model=a,b`` expansion, a pre-check in seconds, then Hydra."""
    sys.argv[1:] = expand_model_list(sys.argv[1:])
    launch("eval", preflight_evaluate, _hydra_main)


if __name__ == "__main__":
    main()
