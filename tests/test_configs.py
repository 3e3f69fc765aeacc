"""Tests of the shipped Hydra config tree and dream_pl.config's checks.

Config keys are constructor arguments, so composing and instantiating every option is what catches
drift between ``conf/`` and the code; the checks must turn bad values into one clear line.
"""

import inspect
from collections.abc import Callable, Sequence

import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from torch import nn

from dream_pl.config import (
    CONF_DIR,
    GROUPS,
    ConfigError,
    check_overrides,
    composition_error,
    from_block,
    group_options,
    validate,
    validate_against_data,
    validate_eval,
    validate_evaluation,
)
from dream_pl.data import DATASETS, RealSet
from dream_pl.engine import Engine
from dream_pl.initializers import KMeansInit, NoiseInit, RandomRealInit
from dream_pl.matchers import DistributionMatcher, GradientMatcher
from dream_pl.runner import make_loggers
from dream_pl.samplers import HerdingSampler, KCenterSampler, RandomSampler, RepresentativeSampler
from dream_pl.workflow import build_sampler, build_trainer, engine_parts

Composer = Callable[[Sequence[str]], DictConfig]


def default_groups(config_name: str) -> set[str]:
    """Groups named in a primary config's defaults list (``_self_`` is not a group)."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{config_name}.yaml").defaults)
    return {next(iter(entry)) for entry in defaults if isinstance(entry, dict)}


EVAL_GROUPS = default_groups("eval")
TRAIN_OPTIONS = [(group, option) for group in GROUPS for option in group_options(group)]
PRESETS = group_options("experiment")
EVAL_OPTIONS = [(g, o) for g, o in TRAIN_OPTIONS if g in EVAL_GROUPS]
MNIST_5K_CLASSES = [400] * 10  # 5,000 images, 500 per class, 100 per class held out for test
SAMPLER_OPTIONS = ["dream", "herding", "kcenter", "random", "representative"]
MODEL_NAMES = ["convnet", "convnet4", "densenet121", "resnet10", "resnetap10"]


def with_values(cfg: DictConfig, *dotlist: str) -> DictConfig:
    """``cfg`` with plain ``key=value`` overrides, as Hydra applies them (a recomposition costs ~0.3 s)."""
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(dotlist)))


def with_new_keys(cfg: DictConfig, *dotlist: str) -> DictConfig:
    """``cfg`` with keys it does not have, as ``+key=value`` on the command line or a preset adds them."""
    for item in dotlist:
        key, value = item.split("=", 1)
        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    return cfg


def configured(compose: Composer, overrides: list[str]) -> DictConfig:
    """Compose the ``group=option`` overrides, then apply the plain ``key=value`` ones."""
    groups = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
    return with_values(compose(groups), *(o for o in overrides if o not in groups))


def tiny_real(name: str, per_class: int = 1) -> RealSet:
    """A random uint8 real set with the dataset's shape: enough to build the distillation module."""
    spec = DATASETS[name]
    g = torch.Generator().manual_seed(0)
    n = spec.num_classes * per_class
    images = torch.randint(0, 256, (n, spec.channels, spec.size, spec.size), generator=g, dtype=torch.uint8)
    labels = torch.arange(spec.num_classes).repeat_interleave(per_class)
    return RealSet(images, labels, spec.mean, spec.std)


# --- composition -------------------------------------------------------------------------------


def test_every_group_has_options_and_is_checked():
    assert default_groups("train") - {"paths", "hydra"} == set(GROUPS)
    assert EVAL_GROUPS - {"paths", "hydra"} <= set(GROUPS)
    assert all(group_options(group) for group in GROUPS)
    assert group_options("sampler") == SAMPLER_OPTIONS


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, o in TRAIN_OPTIONS if g != "experiment"])
def test_train_option_composes_resolves_and_validates(compose_train, group, option):
    cfg = compose_train([f"{group}={option}"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["ipc"] >= 1
    if (group, option) == ("dataset", "folder"):  # the user's tree (tests/test_folder_dataset.py) or none
        with pytest.raises(ConfigError, match=r"dataset\.options\.root is missing \(\?\?\?\)"):
            validate(cfg)
        return
    if plain["trainer"]["accelerator"] == "gpu" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"trainer\.accelerator=gpu needs a CUDA device .*allowed here"):
            validate(cfg)
        return
    validate(cfg)


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("trainer.devices=0", r"trainer\.devices=0 is not allowed; allowed: auto, a count >= 1"),
        ("trainer.devices=[]", r"trainer\.devices=\[\] is not allowed"),
        ("trainer.accelerator=tpu", r"accelerator='tpu' is not allowed; allowed: auto, cpu, gpu, cuda"),
        ("trainer.num_nodes=0", r"trainer\.num_nodes=0 must be an integer >= 1"),
    ],
)
def test_the_trainer_block_is_checked_before_work(compose_train, override, said):
    """Values that Lightning would refuse only after the data is loaded are refused by the pre-check."""
    with pytest.raises(ConfigError, match=said):
        validate(compose_train(["trainer=ddp", override]))


def test_a_key_the_trainer_does_not_take_is_refused_before_any_data_is_read(compose_train):
    from dream_pl.workflow import check_trainer_keys

    with pytest.raises(ConfigError, match=r"unknown key trainer\.max_stepz; allowed: .*accelerator"):
        check_trainer_keys(compose_train(["+trainer.max_stepz=3"]))
    check_trainer_keys(compose_train(["trainer=ddp"]))


@pytest.mark.parametrize(("group", "option"), EVAL_OPTIONS)
def test_eval_option_composes_resolves_and_validates(compose_eval, group, option):
    cfg = compose_eval([f"{group}={option}", "synthetic=run/synthetic.pt"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["synthetic"] == "run/synthetic.pt"
    assert plain["evaluation"]["models"] == [plain["model"]["name"]]
    validate_evaluation(cfg.evaluation)


@pytest.mark.parametrize("preset", PRESETS)
def test_experiment_preset_composes_and_matches_its_name(compose_train, preset):
    """The ``experiment`` group's options: composed, resolved, validated, and named after what they set."""
    cfg = compose_train([f"experiment={preset}"])
    OmegaConf.to_container(cfg, resolve=True)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():  # a GPU preset, on a CPU here
        with pytest.raises(ConfigError, match=r"trainer\.accelerator=gpu needs a CUDA device"):
            validate(cfg)
    else:
        validate(cfg)
    assert cfg.task_name == preset
    assert cfg.sampler._target_.endswith("RepresentativeSampler")
    assert cfg.init._target_.endswith("KMeansInit")
    assert cfg.model.name in cfg.evaluation.models
    if "_ipc" in preset:  # the paper presets; quickstart and efficiency_* are scaled studies
        name, ipc = preset.rsplit("_ipc", 1)
        assert cfg.ipc == int(ipc)
        assert cfg.dataset.name == {"imagenet10": "imagenet_subset"}.get(name, name)


def test_preset_values_win_over_the_recipe_and_the_command_line_wins_over_both(compose_train):
    cfg = compose_train(["experiment=tiny_imagenet_ipc50"])
    assert cfg.distill.lr_img == 1e-6
    assert cfg.distill.batch_real == 64
    assert cfg.sampler.n_clusters == 64  # N follows batch_real
    cfg = compose_train(["experiment=cifar10_ipc10", "ipc=3", "distill.lr_img=0.1"])
    assert (cfg.ipc, cfg.distill.lr_img) == (3, 0.1)


def test_debug_fdr_is_a_tiny_run_without_logger(compose_train):
    cfg = compose_train(["debug=fdr"])
    assert (cfg.iterations, cfg.distill.inner_loops) == (1, 2)
    assert (cfg.evaluation.repeats, cfg.evaluation.epochs) == (1, 2)
    assert cfg.logger == {}


def test_eval_repeats_and_model_flow_into_the_evaluation_block(compose_eval):
    cfg = compose_eval(["synthetic=x.pt", "repeats=2", "model=resnet10"])
    assert (cfg.evaluation.repeats, list(cfg.evaluation.models)) == (2, ["resnet10"])


# --- instantiation -----------------------------------------------------------------------------


@pytest.mark.parametrize("option", group_options("model"))
def test_every_model_builds(compose_train, option):
    net = instantiate(compose_train([f"model={option}"]).model, channels=1, num_classes=10, size=28)()
    assert isinstance(net, nn.Module)
    assert callable(net.embed)
    assert net.embed_dim >= 1


def test_model_knobs_reach_the_constructor(compose_train):
    cfg = compose_train(["model=convnet", "model.width=8", "model.depth=2"])
    net = instantiate(cfg.model, channels=3, num_classes=10, size=32)()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 8), (8, 8)]
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("option", "cls"), [("gradient", GradientMatcher), ("distribution", DistributionMatcher)]
)
def test_every_matcher_builds(compose_train, option, cls):
    assert sorted(group_options("matcher")) == ["distribution", "gradient"]
    matcher = instantiate(compose_train([f"matcher={option}"]).matcher)
    assert isinstance(matcher, cls)


@pytest.mark.parametrize(
    ("option", "cls"), [("herding", HerdingSampler), ("kcenter", KCenterSampler), ("random", RandomSampler)]
)
def test_batch_samplers_build_with_batch_real_images_per_match(compose_train, option, cls):
    sampler = build_sampler(
        with_values(compose_train([f"sampler={option}"]), "distill.batch_real=48").sampler
    )
    assert type(sampler) is cls
    assert sampler.batch_size == 48
    assert sampler.selects is (option != "random")


@pytest.mark.parametrize("option", ["dream", "representative"])
def test_n_is_its_own_value_not_the_real_batch(compose_train, option):
    sampler = build_sampler(
        with_values(compose_train([f"sampler={option}"]), "distill.batch_real=48").sampler
    )
    assert type(sampler) is RepresentativeSampler
    assert (sampler.n_clusters, sampler.n_per_cluster) == (128, 1)  # the paper's N, whatever batch_real is
    assert not hasattr(sampler, "interval")  # the schedule belongs to the clustering callback


def test_representative_is_an_alias_of_dream(compose_train):
    assert compose_train(["sampler=dream"]).sampler == compose_train(["sampler=representative"]).sampler
    sampler = build_sampler(with_values(compose_train(["sampler=dream"]), "sampler.n_per_cluster=2").sampler)
    assert (sampler.n_clusters, sampler.n_per_cluster) == (128, 2)


@pytest.mark.parametrize(
    ("option", "cls"),
    [("kmeans", KMeansInit), ("random", RandomRealInit), ("first", RandomRealInit), ("noise", NoiseInit)],
)
def test_every_init_builds(compose_train, option, cls):
    assert sorted(group_options("init")) == ["first", "kmeans", "noise", "random"]
    assert isinstance(instantiate(compose_train([f"init={option}"]).init), cls)


def test_kmeans_defaults_are_the_authors_uniform_start_on_matched_features(compose_train):
    cfg = compose_train([])
    for block in (cfg.sampler, cfg.init):
        assert (block.kmeans_init, block.features) == ("random", "normalized")
    assert instantiate(compose_train(["init=first"]).init).order == "first"


@pytest.mark.parametrize(
    ("option", "classes"),
    [
        ("csv", [CSVLogger]),
        ("tensorboard", [TensorBoardLogger]),
        ("wandb", [WandbLogger]),
        ("none", []),
    ],
)
def test_every_logger_builds_offline(compose_train, tmp_path, monkeypatch, option, classes):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    nodes = compose_train([f"logger={option}"]).logger
    loggers = [instantiate(node, save_dir=str(tmp_path)) for node in nodes.values()]
    assert [type(lg) for lg in loggers] == classes
    assert all(isinstance(lg, Logger) for lg in loggers)


def test_make_loggers_writes_under_the_run_directory(compose_train, tmp_path):
    cfg = with_values(compose_train(["logger=csv"]), "ipc=7")
    (logger,) = make_loggers(cfg, tmp_path, job_type="distill")
    logger.save()
    hparams = OmegaConf.load(tmp_path / "csv" / "hparams.yaml")
    assert hparams.ipc == 7
    assert hparams.seed == cfg.seed
    assert hparams.git_commit  # the source tree's commit (or "unknown" outside git)
    assert hparams.distill.n_data == 500  # resolved, not "${dataset.recipe.n_data}"


@pytest.mark.parametrize("option", group_options("trainer"))
def test_every_trainer_builds(compose_train, tmp_path, option):
    cfg = compose_train([f"trainer={option}"])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        accepted = inspect.signature(pl.Trainer.__init__).parameters
        assert set(cfg.trainer) - {"_target_", "matmul_precision"} <= set(accepted)
        pytest.skip("no CUDA device: keys checked against Trainer's signature only")
    trainer = build_trainer(
        cfg,
        max_steps=1,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    assert trainer.max_steps == 1
    if option == "cpu":
        assert isinstance(trainer.accelerator, CPUAccelerator)


# --- the dataset recipe reaches the loop -------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "metric", "lr_img", "n_data", "size_base", "lr"),
    [
        ("cifar100", "mse", 5e-3, 2000, 32, 5e-3),  # 5e-3 * (10/10) * (32/32)^2
        ("fashion_mnist", "l1", 1e-4, 500, 32, 1e-4 * (28 / 32) ** 2),
        ("mnist_5k", "l1", 1e-4, 500, 28, 1e-4),
    ],
)
def test_dataset_recipe_flows_into_the_loop(compose_train, dataset, metric, lr_img, n_data, size_base, lr):
    cfg = with_values(compose_train([f"dataset={dataset}"]), "model.width=8")
    engine = Engine(**engine_parts(cfg, tiny_real(cfg.dataset.name), DATASETS[cfg.dataset.name]))
    assert engine.matcher.metric == metric
    assert (engine.cfg.lr_img, engine.cfg.n_data, engine.cfg.lr_size_base) == (lr_img, n_data, size_base)
    assert engine.cfg.ipc == 10
    assert engine.image_opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-9)


def test_recipe_sets_the_augmentation_per_dataset(compose_train):
    cifar, mnist = compose_train(["dataset=cifar100"]), compose_train(["dataset=mnist_5k"])
    assert "cutout" in cifar.distill.match_dsa
    assert "cutout" not in mnist.distill.match_dsa  # MNIST with f > 1: no cutout while matching
    assert "flip" in cifar.evaluation.dsa
    assert "flip" not in mnist.evaluation.dsa  # digits: no flip
    assert (cifar.evaluation.cutmix_p, mnist.distill.net_cutmix_p) == (0.5, 0.0)


# --- validate ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("ipc=0", ["ipc=0", ">= 1"]),
        ("iterations=0", ["iterations=0", ">= 1"]),
        ("matcher.metric=foo", ["'foo'", "mse", "l1", "l1_mean", "cos"]),
        ("sampler.backend=foo", ["'foo'", "auto", "faiss", "torch"]),
        ("init.backend=foo", ["'foo'", "auto", "faiss", "torch"]),
        ("sampler.kmeans_init=k-means++", ["'k-means++'", "random", "kmeans++"]),
        ("init.features=raw", ["init.features", "'raw'", "normalized", "pixels"]),
        ("distill.image_step=each", ["'each'", "joint", "per_class"]),
        ("trainer.precision=16-mixed", ["16-mixed", "32-true", "bf16-mixed"]),
        ("sampler.embed_subset=100", ["sampler.embed_subset=100", ">= 128"]),
        ("sampler.embed_chunk=0", ["sampler.embed_chunk=0", ">= 1"]),
        ("distill.match_dsa=color_bogus", ["color_bogus", "'bogus'", "crop", "cutout", "flip", "rotate"]),
        ("evaluation.models=[nope]", ["'nope'", *MODEL_NAMES]),
        ("evaluation.repeats=0", ["evaluation.repeats=0", ">= 1"]),
        ("evaluation.cutmix_p=1.5", ["1.5", "[0, 1]"]),
        ("sampler.n_clusters=0", ["sampler.n_clusters=0", ">= 1"]),
    ],
)
def test_validate_names_the_bad_value_and_the_allowed_ones(compose_train, override, names):
    with pytest.raises(ConfigError) as err:
        validate(with_values(compose_train([]), *override.split()))
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message


@pytest.mark.parametrize(
    ("override", "names"),
    [
        pytest.param(
            "ipc=ten",
            ["ipc='ten'"],
        ),
        pytest.param(
            "ipc=1.5",
            ["1.5"],
        ),
    ],
)
def test_validate_rejects_values_of_the_wrong_type(compose_train, override, names):
    with pytest.raises(ConfigError) as err:
        validate(with_values(compose_train([]), *override.split()))
    for name in names:
        assert name in str(err.value)


def test_a_part_refuses_a_value_its_schema_types_allow_in_one_line(compose_train):
    """The schema passes any string as a metric; the part itself names the value and the allowed ones."""
    with pytest.raises(ConfigError, match=r"matcher\.metric='3' is not one of mse, l1, l1_mean, cos"):
        validate(compose_train(["matcher.metric=3"]))


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("distill.cuda_graphs=maybe", ["distill.cuda_graphs=maybe", "'maybe' is not a valid bool"]),
        ("distill.factor=1.5", ["distill.factor=1.5", "converted to Integer"]),
        ("evaluation.stacked=maybe", ["evaluation.stacked=maybe", "not a valid bool"]),
        ("evaluation.models=convnet", ["evaluation.models=convnet", "list"]),
        ("sampler.n_clusters=abc", ["sampler.n_clusters=abc", "converted to Integer"]),
        ("sampler.interval=1.5", ["sampler.interval=1.5", "converted to Integer"]),
        ("matcher.bias=maybe", ["matcher.bias=maybe", "not a valid bool"]),
        ("init.max_iter=many", ["init.max_iter=many", "converted to Integer"]),
    ],
)
def test_a_schema_block_refuses_a_wrong_type_while_composing(compose_train, override, names):
    """Every block the loop reads is a structured config: Hydra refuses the value, said in one line."""
    with pytest.raises(Exception) as raised:  # noqa: PT011 - Hydra's ConfigCompositionException
        compose_train([override])
    message = str(composition_error(raised.value))
    assert "\n" not in message
    for name in names:
        assert name in message


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["+distill.class_chunks=4"], "distill.class_chunks", ["inner_loops", "lr_size_base", "n_data"]),
        (["+distill.lr_imgg=1"], "distill.lr_imgg", ["lr_img"]),
        (["+evaluation.epoch=3"], "evaluation.epoch", ["epochs", "repeats", "stacked", "periodic"]),
        (["+evaluation.periodic.epoch=3"], "evaluation.periodic.epoch", ["epochs", "repeats"]),
        (["+sampler.n_cluster=3"], "sampler.n_cluster", ["n_clusters", "n_per_cluster", "interval"]),
        (["+model.widht=3"], "model.widht", ["width", "depth", "norm"]),
        (["+matcher.metrc=l1"], "matcher.metrc", ["metric", "bias", "fc"]),
        (["+init.max_iters=3"], "init.max_iters", ["max_iter", "backend"]),
    ],
)
def test_unknown_keys_in_a_block_are_an_error_naming_the_key(compose_train, overrides, key, allowed):
    """``+block.key=value`` adds past a schema (Hydra lets ``+`` add): refused before work all the same."""
    added = [o for o in overrides if o.startswith("+")]
    with pytest.raises(ConfigError) as err:
        validate(with_new_keys(compose_train(added), *(o for o in overrides if o not in added)))
    message = str(err.value)
    assert f"unknown key {key};" in message
    for name in allowed:
        assert name in message


def test_interval_belongs_to_selecting_samplers_only(compose_train):
    with pytest.raises(ConfigError, match=r"unknown key sampler\.interval"):
        validate(with_new_keys(compose_train(["sampler=random"]), "sampler.interval=5"))
    cfg = compose_train(["sampler=herding"])
    cfg.sampler.interval = "???"  # an option that leaves its schema's interval unset
    with pytest.raises(ConfigError, match=r"sampler\.interval is missing: HerdingSampler"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"sampler\.interval=0 must be an integer >= 1"):
        validate(with_values(compose_train(["sampler=dream"]), "sampler.interval=0"))


def test_every_selecting_sampler_gets_its_clustering_interval(compose_train):
    from dream_pl.data import RealSet, load_dataset
    from dream_pl.engine import Engine
    from dream_pl.workflow import engine_parts

    data = load_dataset("mnist_5k")
    real = RealSet.from_data(data, "train")
    for option, interval in (("dream", 10), ("herding", 7), ("kcenter", 3), ("random", None)):
        cfg = compose_train([f"sampler={option}", "model.width=8", "ipc=1"])
        if interval:
            cfg.sampler.interval = interval
        assert Engine(**engine_parts(cfg, real, data.spec)).interval == interval, option


def test_the_distill_block_is_the_loop_config(compose_train):
    from dream_pl.schemas import DistillConfig

    cfg = compose_train(["dataset=fashion_mnist", "ipc=3", "seed=4"])
    loop = from_block(DistillConfig, cfg.distill, "distill", ipc=cfg.ipc, seed=cfg.seed)
    assert (loop.ipc, loop.seed, loop.lr_size_base, loop.factor, loop.inner_loops) == (3, 4, 32, 2, 100)
    cfg = compose_train(["distill.n_data=???"])
    with pytest.raises(ConfigError, match=r"distill\.n_data is missing"):
        from_block(DistillConfig, cfg.distill, "distill", ipc=cfg.ipc, seed=cfg.seed)
    with pytest.raises(ConfigError, match=r"distill\.n_data is missing \(\?\?\?\)"):
        validate(cfg)


def test_the_loop_runs_at_any_precision_without_a_loss_scaler(compose_train):
    for precision in ("32-true", "bf16-mixed", "16-true", "64-true"):
        validate(
            with_values(compose_train([]), "distill.image_step=per_class", f"trainer.precision={precision}")
        )


def test_evaluate_checks_its_model_block(compose_eval):
    from dream_pl.config import check_model_block

    cfg = with_new_keys(compose_eval(["synthetic=x.pt"]), "model.foo=1")
    with pytest.raises(ConfigError, match=r"unknown key model\.foo; allowed: .*width"):
        check_model_block(cfg.model, cfg.dataset)


def test_validate_evaluation_on_the_eval_config(compose_eval):
    with pytest.raises(ConfigError, match=r"evaluation\.repeats=0"):
        validate_evaluation(compose_eval(["synthetic=x.pt", "repeats=0"]).evaluation)


# --- validate_against_data ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["sampler.n_clusters=500"], ["500", "400", "1..400"]),
        (["sampler.n_clusters=200", "sampler.n_per_cluster=3"], ["200 x 3", "600", "400"]),
        (["ipc=200"], ["200 x 2^2", "800", "400"]),
        (["sampler=herding", "distill.batch_real=401"], ["401", "400"]),
    ],
)
def test_selections_larger_than_the_smallest_class_are_rejected(compose_train, overrides, names):
    with pytest.raises(ConfigError) as err:
        validate_against_data(configured(compose_train, overrides), MNIST_5K_CLASSES)
    message = str(err.value)
    assert "\n" not in message
    assert "mnist_5k" in message
    for name in names:
        assert name in message


@pytest.mark.parametrize(
    "overrides",
    [
        ["sampler.n_clusters=400"],
        ["sampler.n_clusters=200", "sampler.n_per_cluster=2"],
        ["ipc=100"],  # 100 x 2^2 = 400 images: exactly one class
        ["init=noise", "ipc=200"],  # noise needs no real images
        ["sampler=random", "distill.batch_real=1000"],  # random batches fall back to replacement
    ],
)
def test_selections_that_fit_pass(compose_train, overrides):
    validate_against_data(configured(compose_train, overrides), MNIST_5K_CLASSES)


def test_the_smallest_class_decides(compose_train):
    with pytest.raises(ConfigError, match=r"= 128 is too large.* 50 images"):
        validate_against_data(compose_train([]), [400] * 9 + [50])


# --- check_overrides ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "bad", "allowed"),
    [
        (["sampler=foo"], "foo", SAMPLER_OPTIONS),
        (["ipc=3", "sampler=dream,foo"], "foo", SAMPLER_OPTIONS),
        (["++sampler=bar"], "bar", SAMPLER_OPTIONS),
        (["+experiment=x"], "x", ["cifar10_ipc10", "imagenet10_ipc1", "quickstart"]),
        (["model=resnet18"], "resnet18", MODEL_NAMES),
    ],
)
def test_unknown_group_option_lists_the_allowed_ones(argv, bad, allowed):
    with pytest.raises(ConfigError) as err:
        check_overrides(argv)
    message = str(err.value)
    assert "\n" not in message
    assert f"'{bad}'" in message
    for option in allowed:
        assert option in message


def test_known_options_and_plain_keys_pass():
    check_overrides(
        [
            "-m",
            "sampler.n_clusters=32",
            "model=convnet",
            "dataset=mnist,fashion_mnist",
            "+experiment=quickstart",
            "experiment=null",
            "hydra.run.dir=somewhere",
            "evaluation.models=[convnet,resnet10]",
            "model=choice(convnet,resnet10)",
        ]
    )


def test_matmul_precision_names_the_allowed_values(compose_train, compose_eval):
    with pytest.raises(
        ConfigError, match=r"matmul_precision='medium' is not allowed; allowed: highest, high"
    ):
        validate(compose_train(["trainer.matmul_precision=medium"]))
    with pytest.raises(ConfigError, match=r"trainer\.matmul_precision"):
        validate_eval(compose_eval(["synthetic=random", "trainer.matmul_precision=medium"]))
