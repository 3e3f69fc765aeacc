"""Distillation entry point: ``python -m dream_pl.train dataset=cifar100 ipc=10 sampler=dream``.

Every job's config is checked before Lightning is imported or a folder is made (:mod:`dream_pl.launch`);
the work itself is :func:`dream_pl.workflow.train`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dream_pl.launch import launch, prechecked, preflight_train, run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from dream_pl.runner import close_wandb  # Lightning: only once the config passed the pre-check
    from dream_pl.workflow import train

    try:
        metrics = run_job(cfg, lambda: train(cfg, checked=prechecked()))
    finally:
        close_wandb()
    value = metrics.get(cfg.get("optimized_metric", ""), None)
    return None if value is None else float(value)


def main() -> None:
    """Console entry: pre-check every job in seconds, then hand over to Hydra."""
    launch("train", preflight_train, _hydra_main)


if __name__ == "__main__":
    main()
