"""The front door and the resume check, in-process: what is refused before work, and what is left behind."""

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dream_pl.checkpoints import CONFIG_KEY, ResumeError, check_resume, identity_mismatch
from dream_pl.cli import check_out_dir
from dream_pl.config import CONF_DIR, ConfigError, check_top_keys, validate
from dream_pl.files import atomic_torch_save
from dream_pl.launch import (
    compose_job,
    discard_if_empty,
    job_overrides,
    keep_hydra_history,
    preflight_all,
    preflight_train,
)
from dream_pl.runlock import LOCK_NAME
from dream_pl.synthetic import SyntheticData, save_synthetic


def test_a_sweep_expands_to_every_combination_as_hydras_basic_sweeper_does():
    jobs, multirun = job_overrides(["-m", "ipc=1,10", "seed=range(0,2)", "+x=a", "hydra.job.chdir=true"])
    assert multirun
    assert jobs == [
        ["ipc=1", "seed=0", "+x=a"],
        ["ipc=1", "seed=1", "+x=a"],
        ["ipc=10", "seed=0", "+x=a"],
        ["ipc=10", "seed=1", "+x=a"],
    ]
    assert job_overrides(["ipc=1,10"]) == ([["ipc=1,10"]], False)  # no -m: one job (Hydra then refuses it)
    assert job_overrides(["--cfg", "job"]) is None  # Hydra's own options: left to Hydra


def test_a_glob_sweep_expands_over_the_config_group_and_a_repeated_key_keeps_its_last_value():
    jobs, _ = job_overrides(["-m", "model=glob(convnet*)", "ipc=1", "ipc=choice(2,3)"])
    models = sorted(p.stem for p in (CONF_DIR / "model").glob("convnet*.yaml"))
    assert len(models) >= 1
    assert jobs == [[f"model={m}", f"ipc={i}"] for m in models for i in (2, 3)]


@pytest.mark.parametrize("sweep", ["ipc=[1", "distill.lr_img=interval(0,1)"])
def test_a_sweep_hydra_cannot_expand_is_refused_in_one_line(sweep):
    with pytest.raises(ConfigError) as err:
        job_overrides(["-m", sweep])
    assert "\n" not in str(err.value)


def test_a_composition_error_is_one_line_naming_the_key_and_its_block():
    with pytest.raises(
        ConfigError, match=r"^unknown key distill\.lr_imgg; the distill block's keys: .*lr_img"
    ):
        compose_job("train", ["distill.lr_imgg=1"])
    with pytest.raises(ConfigError) as err:
        compose_job("train", ["ipc=[1"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("distill.net_cutmix_p=abc", "Value 'abc' of type 'str' could not be converted to Float"),
        ("evaluation.lr_milestones=abc", "Invalid value assigned: str is not a ListConfig, list or tuple."),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_at_composition_in_one_line(override, said):
    with pytest.raises(ConfigError) as err:
        compose_job("train", [override])
    assert str(err.value) == f"Error merging override {override}: {said}"


def test_a_key_added_with_plus_that_nothing_reads_is_refused(compose_train):
    cfg = compose_train([])
    OmegaConf.set_struct(cfg, False)
    cfg.ipcc = 1
    with pytest.raises(ConfigError, match=r"unknown key 'ipcc'.*allowed top-level keys: .*\bipc\b"):
        check_top_keys(cfg, "train")


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("distill.lr_img=inf", "distill.lr_img=inf"),
        ("distill.lr_img=nan", "distill.lr_img=nan"),
        ("distill.lr_net=-0.1", "distill.lr_net=-0.1"),
        ("distill.momentum_img=inf", "distill.momentum_img=inf"),
        ("evaluation.lr=inf", "evaluation.lr=inf"),
        ("evaluation.weight_decay=-1", "evaluation.weight_decay=-1"),
    ],
)
def test_non_finite_or_negative_rates_are_refused(compose_train, override, said):
    with pytest.raises(ConfigError, match="must be a finite number") as err:
        validate(compose_train([override]))
    assert said in str(err.value)


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("evaluation.cutmix_p=1.5", "evaluation.cutmix_p=1.5 must be a number in [0, 1]"),
        ("evaluation.lr_milestones=[0.5,2]", "must be a list of fractions of training in [0, 1]"),
        ("seed=1.5", "seed=1.5 must be an integer >= 0"),
        ("seed=abc", "seed='abc' must be an integer >= 0"),
    ],
)
def test_values_that_would_fail_late_are_refused_before_work(compose_train, override, said):
    with pytest.raises(ConfigError) as err:
        validate(compose_train([override]))
    assert said in str(err.value)


def test_sharded_runs_refuse_per_class_image_steps_before_work(compose_train):
    with pytest.raises(ConfigError, match="trainer=ddp"):
        validate(compose_train(["trainer=ddp", "distill.image_step=per_class"]))
    validate(compose_train(["trainer=ddp"]))


def test_out_dir_checks_leave_nothing_behind(tmp_path):
    check_out_dir(tmp_path / "new" / "deeper")  # creatable: fine
    assert list(tmp_path.iterdir()) == []  # the writability probe is gone again
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(ConfigError, match="cannot be created"):
        check_out_dir(tmp_path / "file" / "run")
    with pytest.raises(ConfigError, match="cannot be written"):
        check_out_dir(Path("/proc/dream-pl/run"))  # /proc takes no new folders, not even from root


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: a read-only folder cannot be provoked")
def test_a_read_only_folder_is_refused(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot be written"):
            check_out_dir(tmp_path / "run")
    finally:
        tmp_path.chmod(0o700)


def test_a_multirun_cannot_share_one_out_dir(tmp_path):
    with pytest.raises(ConfigError, match="shared by 2 jobs"):
        preflight_all("train", ["-m", "seed=0,1", f"out_dir={tmp_path / 'run'}"], preflight_train)
    sweep = ["-m", f"out_dir={tmp_path / 'a'},{tmp_path / 'b'}"]
    assert preflight_all("train", sweep, preflight_train) is None  # a swept out_dir: one folder each
    assert preflight_all("train", [f"out_dir={tmp_path / 'c'}"], preflight_train) == tmp_path / "c"
    assert list(tmp_path.iterdir()) == []  # checks only


def test_an_empty_failed_run_folder_and_its_empty_parents_are_removed(tmp_path):
    logs = tmp_path / "logs"
    run = logs / "distill" / "runs" / "t0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("a: 1")
    (run / "train.log").write_text("")
    (logs / "keep.txt").write_text("mine")
    discard_if_empty(run, up_to=logs, job_log="train.log")
    assert sorted(p.name for p in logs.iterdir()) == ["keep.txt"]  # run, runs/, distill/ gone; logs/ kept


def test_a_folder_that_existed_before_the_call_or_holds_other_logs_is_kept(tmp_path, monkeypatch):
    from dream_pl import launch

    mine = tmp_path / "mine"
    (mine / ".hydra").mkdir(parents=True)
    (mine / "console.log").write_text("the user's own log")
    launch.discard_if_empty(mine, up_to=tmp_path, job_log="train.log")
    assert (mine / "console.log").is_file()  # not Hydra's job log
    existing = tmp_path / "existing"
    (existing / ".hydra").mkdir(parents=True)
    monkeypatch.setattr(launch, "_EXISTING", {existing.resolve()})
    launch.discard_if_empty(existing, up_to=tmp_path, job_log="train.log")
    assert existing.is_dir()  # the user's out_dir, made before the call


def test_a_run_folder_with_work_or_a_lock_is_kept(tmp_path):
    for extra in ("synthetic.pt", LOCK_NAME):
        folder = tmp_path / extra
        (folder / ".hydra").mkdir(parents=True)
        (folder / extra).write_text("x")
        discard_if_empty(folder, up_to=tmp_path)
        assert (folder / extra).is_file()


def test_an_earlier_attempts_hydra_config_is_kept(tmp_path):
    for k in range(3):
        (tmp_path / ".hydra").mkdir()
        (tmp_path / ".hydra" / "config.yaml").write_text(f"attempt {k}")
        keep_hydra_history(tmp_path)
    assert [(tmp_path / f".hydra.{k}" / "config.yaml").read_text() for k in (1, 2, 3)] == [
        "attempt 0",
        "attempt 1",
        "attempt 2",
    ]


# --- the resume check ---------------------------------------------------------------------------


def fake_checkpoint(path, config) -> None:
    torch.save(
        {"state_dict": {}, "engine": {}, CONFIG_KEY: OmegaConf.to_container(config, resolve=True)}, path
    )


def test_identity_mismatch_names_every_changed_key_with_both_values(compose_train):
    saved = OmegaConf.to_container(compose_train(["ipc=1"]), resolve=True)
    now = compose_train(["ipc=2", "sampler.n_clusters=64", "distill.lr_img=0.5", "iterations=5"])
    changed = {key: (old, new) for key, old, new in identity_mismatch(saved, now)}
    assert changed == {"ipc": (1, 2), "sampler.n_clusters": (128, 64)}  # lr and iterations may change


def test_resume_of_another_runs_checkpoint_is_refused(tmp_path, compose_train):
    (tmp_path / "checkpoints").mkdir()
    fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", compose_train(["seed=0"]))
    assert (
        check_resume(compose_train(["seed=0", "iterations=9"]), tmp_path)
        == tmp_path / "checkpoints" / "last.ckpt"
    )
    with pytest.raises(ResumeError, match=r"seed: checkpoint 0, now 1.*out_dir=<new folder>"):
        check_resume(compose_train(["seed=1"]), tmp_path)


def test_a_checkpoint_of_an_earlier_dream_pl_is_refused_with_what_to_do(tmp_path, compose_train):
    """Before the engine a checkpoint held the network optimiser (and, earlier still, no run config)."""
    (tmp_path / "checkpoints").mkdir()
    for blob in ({"state_dict": {}}, {"state_dict": {}, CONFIG_KEY: {}, "net_optimizer": {}}):
        torch.save(blob, tmp_path / "checkpoints" / "last.ckpt")
        with pytest.raises(
            ResumeError, match=r"written by an earlier dream-pl .*start afresh with a new out_dir"
        ):
            check_resume(compose_train([]), tmp_path)


def test_a_missing_resume_file_is_named(tmp_path, compose_train):
    with pytest.raises(ResumeError, match=r"resume=/nowhere\.ckpt does not exist"):
        check_resume(compose_train(["resume=/nowhere.ckpt"]), tmp_path)


def test_results_are_written_readable_like_the_pngs(tmp_path, monkeypatch):
    import dream_pl.files

    monkeypatch.setattr(dream_pl.files, "UMASK", 0o022)
    atomic_torch_save({"a": 1}, tmp_path / "x.pt")
    save_synthetic(tmp_path / "s.pt", SyntheticData(torch.zeros(1, 1, 2, 2), torch.zeros(1).long()))
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "s.pt").stat().st_mode & 0o777 == 0o644


def test_a_job_the_pre_check_validated_is_not_validated_again(tmp_path, monkeypatch):
    """Validation runs once per job: the launcher's pre-check tells the job (``train(cfg, checked=...)``)."""
    import dream_pl.launch as launch_module

    monkeypatch.setattr(launch_module, "_CHECKED", [False])
    assert not launch_module.prechecked()
    assert launch_module.preflight_all("train", ["--cfg", "job"], preflight_train) is None  # Hydra's flag
    assert not launch_module.prechecked()  # not checked: the job validates itself
    launch_module.preflight_all("train", [f"out_dir={tmp_path / 'run'}"], preflight_train)
    assert launch_module.prechecked()
