"""The W&B dashboard as code: ``python -m dream_pl.dashboard entity=<team> project=dream-pl``.

Builds a workspace (wandb-workspaces) with the panels a DREAM study needs: accuracy vs iteration grouped
by sampler, the N x n x I_int x IPC grid as parallel coordinates and a scatter heat map, matching-loss and
diagnostics curves, the cost of clustering, and the synthetic image grids. Saved only when online.
"""

from __future__ import annotations

import hydra
import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from omegaconf import DictConfig, OmegaConf

from dream_pl.cli import report_user_errors
from dream_pl.config import ConfigError
from dream_pl.runner import wandb_offline

VIRIDIS = (("#440154", 0), ("#21918c", 50), ("#fde725", 100))
SWEPT = ("sampler.n_clusters", "sampler.n_per_cluster", "sampler.interval", "ipc", "seed")


def build_workspace(entity: str, project: str, name: str = "DREAM", model: str = "convnet") -> ws.Workspace:
    """The workspace; uses the logged key names verbatim (``eval/<model>/...``, ``distill/...``)."""
    final = f"eval/{model}/distilled/acc"
    accuracy = ws.Section(
        name="Accuracy",
        panels=[
            wr.LinePlot(
                title="accuracy vs iteration",
                x="iteration",
                y=[f"eval/{model}/acc"],
                groupby="sampler._target_",
            ),
            wr.BarPlot(
                title="final accuracy by sampler",
                metrics=[wr.SummaryMetric(final)],
                groupby="sampler._target_",
            ),
        ],
    )
    grid = ws.Section(
        name="N x n x I_int x IPC",
        panels=[
            wr.ParallelCoordinatesPlot(
                title="final accuracy over the sweep",
                columns=[wr.ParallelCoordinatesPlotColumn(metric=wr.Config(key)) for key in SWEPT]
                + [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(final))],
            ),
            wr.ScatterPlot(
                title="N x n heat map",
                x=wr.Config("sampler.n_clusters"),
                y=wr.Config("sampler.n_per_cluster"),
                z=wr.SummaryMetric(final),
                gradient=[wr.GradientPoint(color=c, offset=o) for c, o in VIRIDIS],
            ),
        ],
    )
    matching = ws.Section(
        name="Matching",
        panels=[
            wr.LinePlot(
                title="gradient difference (matching loss)", y=["distill/loss"], groupby="sampler._target_"
            ),
            wr.LinePlot(
                title="MMD to the whole class", y=["distill/diag/mmd_selected", "distill/diag/mmd_random"]
            ),
            wr.LinePlot(
                title="gradient norm", y=["distill/diag/gradnorm_selected", "distill/diag/gradnorm_random"]
            ),
            wr.LinePlot(
                title="seconds per step",
                y=["distill/time/match_s", "distill/time/net_s", "distill/time/cluster_s"],
            ),
        ],
    )
    images = ws.Section(name="Synthetic images", panels=[wr.MediaBrowser(media_keys=["distill/synthetic"])])
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        sections=[accuracy, grid, matching, images],
        runset_settings=ws.RunsetSettings(groupby=[ws.Config("sampler._target_")]),
    )


def publish(cfg: DictConfig) -> ws.Workspace:
    """Build the workspace and save it when W&B credentials exist (or ``save=true``)."""
    if OmegaConf.is_missing(cfg, "entity"):
        raise ConfigError("entity is missing: python -m dream_pl.dashboard entity=<W&B user or team>")
    workspace = build_workspace(cfg.entity, cfg.project, cfg.name, cfg.model)
    save = (not wandb_offline()) if cfg.save == "auto" else bool(cfg.save)
    if save:
        workspace.save()
        print(f"saved workspace {cfg.name!r}: {workspace.url}")
    else:
        panels = sum(len(s.panels) for s in workspace.sections)
        sections = len(workspace.sections)
        print(f"built workspace {cfg.name!r} ({sections} sections, {panels} panels); not saved: offline")
    return workspace


@hydra.main(version_base="1.3", config_path="conf", config_name="dashboard")
def main(cfg: DictConfig) -> None:
    """Console entry: a user error is one line and exit status 2."""
    report_user_errors(lambda: publish(cfg))


if __name__ == "__main__":
    main()
