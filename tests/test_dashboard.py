"""The W&B workspace is built offline from the logged key names; the SLURM launcher config composes."""

import pytest
import wandb_workspaces.reports.v2 as wr
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dream_pl.config import CONF_DIR
from dream_pl.dashboard import build_workspace, publish


def test_workspace_sections_and_keys():
    workspace = build_workspace("team", "dream-pl", model="convnet")
    assert [s.name for s in workspace.sections] == [
        "Accuracy",
        "N x n x I_int x IPC",
        "Matching",
        "Synthetic images",
    ]
    text = workspace._to_model().model_dump_json()  # serialises without any network access
    keys = ["eval/convnet/acc", "eval/convnet/distilled/acc", "distill/loss", "distill/diag/mmd_selected"]
    keys += ["distill/time/cluster_s", "distill/synthetic"]
    keys += ["sampler.value.n_clusters", "sampler.value.n_per_cluster"]  # W&B's path for nested config keys
    for key in keys:
        assert key in text, key
    parallel = next(
        p for s in workspace.sections for p in s.panels if isinstance(p, wr.ParallelCoordinatesPlot)
    )
    assert len(parallel.columns) == 6  # N, n, I_int, IPC, seed, final accuracy


def test_publish_does_not_save_offline(monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = OmegaConf.create(
        {"entity": "team", "project": "p", "name": "DREAM", "model": "convnet", "save": "auto"}
    )
    publish(cfg)
    assert "not saved: offline" in capsys.readouterr().out


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra is not installed")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1
