"""The config layer: the blocks' schemas, registered with Hydra, and the checks composition cannot make.

Every block the loop reads is a structured config, so Hydra refuses an unknown key or a wrong type while
composing: ``distill`` and ``evaluation`` derive from the dataclasses the code reads (:mod:`.schemas`), the
matcher, sampler and initialiser options from their constructors' signatures (hydra-zen's ``builds``). A part
also checks its own values: :func:`validate` builds it (no data needed) and reports its refusal. What remains
here is what neither can know: ranges of the loop's numbers, cross-field rules, names that live in
registries, and (:func:`validate_against_data`) sizes that depend on the dataset, checked before the data
loads where the dataset fixes its class sizes. Every refusal is one line naming the bad value and what is
allowed.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from hydra_zen import builds
from omegaconf import MISSING, DictConfig, OmegaConf

from dream_pl.augment import parse_strategy
from dream_pl.clustering import BACKENDS
from dream_pl.data import DatasetSpec
from dream_pl.data.folder import FOLDER, folder_options, scan
from dream_pl.data.specs import DATASET_NAMES, spec_for
from dream_pl.errors import UserError
from dream_pl.features import FEATURE_INPUTS
from dream_pl.graphs import COMPILE_MODES
from dream_pl.initializers import KMeansInit, NoiseInit, RandomRealInit
from dream_pl.matchers import DistributionMatcher, GradientMatcher
from dream_pl.models import check_model, list_models, model_options
from dream_pl.samplers import HerdingSampler, KCenterSampler, RandomSampler, RepresentativeSampler
from dream_pl.schemas import IMAGE_STEPS, LR_AUTO, LR_RULES, METHODS, NET_DATA, DistillConfig, EvalProtocol

CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = (
    "method",
    "dataset",
    "model",
    "matcher",
    "sampler",
    "init",
    "evaluation",
    "logger",
    "trainer",
    "experiment",
    "debug",
)
MATMUL_PRECISIONS = ("highest", "high")  # torch.set_float32_matmul_precision: strict fp32 | TF32
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")  # what this project runs on (Lightning's names)
T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A bad configuration value; its message is one line meant for the user."""


@dataclass
class PeriodicSchema:
    """``evaluation.periodic``: the cheaper protocol of evaluations during distillation."""

    epochs: int = MISSING
    repeats: int = MISSING


def block_schema(cls: type, name: str, *, omit: Iterable[str] = (), extra: Iterable[tuple] = ()) -> type:
    """A structured-config schema for a yaml block: ``cls``'s fields (every one required) but ``omit``.

    The values and their one-line meaning stay in the yaml; the schema only says which keys exist and their
    types, so they are written once (in ``cls``, which the code reads).
    """
    hints = typing.get_type_hints(cls)
    required = [(f.name, hints[f.name], field(default=MISSING)) for f in fields(cls) if f.name not in omit]
    return make_dataclass(name, [*required, *extra])


DistillSchema = block_schema(DistillConfig, "DistillSchema", omit=("ipc", "seed"))  # those are top-level
WholeProtocolSchema = block_schema(  # evaluation.whole_protocol: what the whole-set reference measures
    EvalProtocol,
    "WholeProtocolSchema",
    omit=[f.name for f in fields(EvalProtocol) if f.name not in EvalProtocol.recipe_fields()],
)
EvaluationSchema = block_schema(
    EvalProtocol,
    "EvaluationSchema",
    omit=["lr"],
    extra=[
        ("lr", Any, field(default=MISSING)),  # a number, or "auto" (LR_AUTO)
        ("validation_per_class", int, field(default=MISSING)),
        ("lr_grid", list[float], field(default=MISSING)),
        ("lr_search_repeats", int, field(default=MISSING)),
        ("enabled", bool, field(default=MISSING)),
        ("models", list[str], field(default=MISSING)),
        ("baseline", bool, field(default=MISSING)),
        ("periodic", PeriodicSchema, field(default_factory=PeriodicSchema)),
        ("whole", bool, field(default=MISSING)),
        ("whole_protocol", WholeProtocolSchema, field(default_factory=WholeProtocolSchema)),
    ],
)
PARTS = {  # the parts the group options build; each option's yaml merges onto its target's schema
    "matcher": (GradientMatcher, DistributionMatcher),
    "sampler": (RandomSampler, RepresentativeSampler, HerdingSampler, KCenterSampler),
    "init": (KMeansInit, RandomRealInit, NoiseInit),
}


def part_schema(target: type) -> type:
    """A part's block schema: its constructor's keywords (hydra-zen ``builds``).

    A selecting sampler's block also holds ``interval``, which the engine reads (when to re-select) and the
    constructor never sees.
    """
    schema = builds(target, populate_full_signature=True, zen_dataclass={"cls_name": target.__name__})
    if not getattr(target, "selects", False):
        return schema
    return make_dataclass(target.__name__, [("interval", int, field(default=MISSING))], bases=(schema,))


DC_NET_EPOCHS = {1: 1, 10: 50, 20: 25, 30: 20, 40: 15, 50: 10}  # DC's get_loops: IPC -> inner_loop


def dc_net_epochs(ipc: int) -> int | None:
    """DC's epochs of network training between matches at ``ipc`` (None: DC states none for it)."""
    return DC_NET_EPOCHS.get(ipc)


def by_channels(channels: int, grey: Any, colour: Any) -> Any:
    """``grey`` for 1-channel images, ``colour`` for 3: how conf/dataset/folder.yaml derives its recipe."""
    if channels not in (1, 3):
        raise ConfigError(
            f"dataset.options.channels={channels!r} is not allowed; allowed: 1 (greyscale), 3 (colour)"
        )
    return grey if channels == 1 else colour


OmegaConf.register_new_resolver("dc_net_epochs", dc_net_epochs, replace=True)  # conf/method/dc.yaml
OmegaConf.register_new_resolver("by_channels", by_channels, replace=True)  # conf/dataset/folder.yaml
_store = ConfigStore.instance()  # the yaml blocks merge onto these (their `defaults` name them)
_store.store(group="schemas", name="distill", node=DistillSchema)
_store.store(group="schemas", name="evaluation", node=EvaluationSchema)
for _group, _targets in PARTS.items():
    for _target in _targets:
        _store.store(group=f"schemas/{_group}", name=_target.__name__, node=part_schema(_target))


def check_keys(name: str, node: DictConfig, allowed: Iterable[str]) -> None:
    """Every key of block ``name`` must be ``allowed``: a typo is an error, never a silently ignored key."""
    allowed = sorted(set(allowed))
    for key in node:
        if key not in allowed:
            raise ConfigError(f"unknown key {name}.{key}; allowed: {', '.join(allowed)}")


def from_block(cls: type[T], node: DictConfig, name: str, **given: Any) -> T:
    """Dataclass ``cls`` from config block ``name``: its fields, except those ``given``, come from the block.

    Which keys the block may hold is its schema's business (composition refuses others); lists become
    tuples so the dataclass stays hashable and immutable.
    """
    wanted = [f.name for f in fields(cls) if f.name not in given]  # type: ignore[arg-type]
    missing = [key for key in wanted if key not in node or OmegaConf.is_missing(node, key)]
    if missing:
        raise ConfigError(f"{name}.{missing[0]} is missing; the {name} block needs: {', '.join(wanted)}")
    values = {key: OmegaConf.select(node, key) for key in wanted}
    plain = {k: tuple(v) if OmegaConf.is_list(v) else v for k, v in values.items()}
    return cls(**plain, **given)


def target_options(node: DictConfig) -> list[str] | None:
    """Keyword arguments the ``_target_`` of a block accepts (None: it takes any)."""
    params = inspect.signature(get_object(node["_target_"])).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def sampler_selects(node: DictConfig) -> bool:
    """Whether the sampler of this block holds a selection that clustering events refresh."""
    return bool(getattr(get_object(node["_target_"]), "selects", False))


def _check_target_block(name: str, node: DictConfig, extra: Iterable[str] = ()) -> None:
    options = target_options(node)
    if options is not None:
        check_keys(name, node, [*options, *extra, "_target_", "_partial_"])


def dataset_options(dataset: DictConfig) -> dict:
    """A ``dataset`` block's options as plain values; one left ``???`` (a folder's root) is refused."""
    options = dataset.get("options") or {}
    missing = sorted(OmegaConf.missing_keys(options)) if OmegaConf.is_config(options) else []
    if missing:
        key = missing[0].rsplit(".", 1)[-1]  # missing_keys names a key from the config's root
        hint = ": the folder holding <root>/train/<class>/ and val/ or test/" if key == "root" else ""
        raise ConfigError(
            f"dataset.options.{key} is missing (???); dataset={dataset.name} needs "
            f"dataset.options.{key}=<value>{hint}"
        )
    return OmegaConf.to_container(options, resolve=True) if OmegaConf.is_config(options) else dict(options)


def check_dataset_block(dataset: DictConfig) -> None:
    """A known dataset name; a folder dataset's options, and its tree listed (a bad one refused, no data)."""
    _check_choice("dataset.name", dataset.name, sorted(DATASET_NAMES))
    dataset_spec(dataset)


def dataset_spec(dataset: DictConfig) -> DatasetSpec:
    """The image shape and classes a ``dataset`` block gives (its options may set size and classes).

    A folder dataset's tree is listed for its classes (no image is opened); its mean and std stay empty.
    """
    return spec_for(dataset.name, dataset_options(dataset))


def smallest_class(dataset: DictConfig) -> tuple[int, str] | None:
    """The training images of the dataset's smallest class and what to call it, where known without data.

    A folder dataset's smallest class is named by its folder, so the user sees which one to fill.
    """
    if dataset.name == FOLDER:
        path, count = scan(folder_options(dataset_options(dataset))).smallest()
        return count, f"{FOLDER} ({path})"
    count = dataset_spec(dataset).smallest_class
    return None if count is None else (count, dataset.name)


def check_model_block(model: DictConfig, dataset: DictConfig) -> None:
    """The ``model`` block (train and evaluate): a known architecture, its own knobs, values it can run.

    Besides the knobs' ranges, the network is built once and run on one blank image of the dataset's
    shape, so combinations such as a ConvNet too deep for 28 px images are refused before any work.
    """
    _check_choice("model.name", model.name, list_models())
    check_keys("model", model, [*model_options(model.name), "name", "_target_", "_partial_"])
    spec = dataset_spec(dataset)
    knobs = {k: v for k, v in model.items() if k not in ("name", "_target_", "_partial_")}
    try:
        check_model(model.name, knobs, channels=spec.channels, num_classes=spec.num_classes, size=spec.size)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_schema_keys(name: str, node: DictConfig, schema: type) -> None:
    """A block holds its schema's keys, each with a value.

    Composition refuses a key the schema lacks, except one added on purpose (``+distill.x=1``), and a
    value left ``???``: both are refused here.
    """
    check_keys(name, node, [f.name for f in fields(schema)])
    missing = sorted(OmegaConf.missing_keys(node))
    if missing:
        raise ConfigError(f"{name}.{missing[0]} is missing (???); the {name} block needs a value for it")


def composition_error(err: Exception) -> ConfigError:
    """Hydra's refusal of an override, in one line: its own first line and its cause's (the type clash).

    A first line that ends in a colon (a config file's clash with a chosen option) takes its second.
    """
    lines = str(err).strip().splitlines()
    said = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    cause = str(err.__cause__).strip().splitlines()[0] if err.__cause__ is not None else ""
    return ConfigError(f"{said}: {cause}" if cause and cause not in said else said)


def check_blocks(cfg: DictConfig) -> None:
    """No block of a train config holds a key nothing reads, and every part accepts its arguments.

    ``distill`` and ``evaluation`` have schemas; the ``_target_`` blocks are checked against their
    constructors' signatures, then built (cheap, no data), so each refuses its own bad values.
    """
    check_schema_keys("distill", cfg.distill, DistillSchema)
    check_model_block(cfg.model, cfg.dataset)
    _check_target_block("matcher", cfg.matcher)
    _check_target_block("init", cfg.init)
    selects = sampler_selects(cfg.sampler)
    _check_target_block("sampler", cfg.sampler, ["interval"] if selects else [])
    if selects and "interval" not in cfg.sampler:
        raise ConfigError(
            f"sampler.interval is missing: {cfg.sampler._target_.rsplit('.', 1)[-1]} re-selects its batches "
            "at clustering events and needs the number of inner steps between them (I_int, paper: 10)"
        )


def build_parts(cfg: DictConfig) -> None:
    """Build the matcher, sampler and initialiser once (cheap, no data): each refuses its own bad values.

    Runs after the sizes were checked to be integers, so what a constructor meets is its own kind of value.
    """
    sampler = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if k != "interval"}
    for name, node in (("matcher", cfg.matcher), ("sampler", sampler), ("init", cfg.init)):
        try:
            instantiate(node)
        except InstantiationException as err:  # Hydra's wrapper around the part's own refusal
            if isinstance(err.__cause__, ValueError):
                raise ConfigError(str(err.__cause__).splitlines()[0]) from None
            if isinstance(err.__cause__, TypeError):
                raise ConfigError(f"the {name} block cannot be built: {err.__cause__}") from None
            raise


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Option names of a config group (yaml files in ``conf/<group>``)."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_top_keys(cfg: DictConfig, config_name: str, conf_dir: Path = CONF_DIR) -> None:
    """Top-level keys are those of ``conf/<config_name>.yaml``: ``+ipcc=1`` is an error, not ignored."""
    primary = OmegaConf.load(conf_dir / f"{config_name}.yaml")
    groups = [next(iter(entry)) for entry in primary.get("defaults", []) if OmegaConf.is_dict(entry)]
    allowed = sorted({*(k for k in primary if k != "defaults"), *groups, "hydra"})
    for key in cfg:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {key!r} (nothing reads it); allowed top-level keys: {', '.join(allowed)}"
            )


def check_overrides(argv: Iterable[str], conf_dir: Path = CONF_DIR) -> None:
    """Reject ``group=option`` command-line overrides whose option does not exist."""
    for arg in argv:
        if "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in GROUPS or "(" in value:
            continue
        allowed = group_options(key, conf_dir)
        for option in value.split(","):
            if option not in allowed and option != "null":
                raise ConfigError(f"unknown {key} {option!r}; allowed: {', '.join(allowed)}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _require_int(name: str, value: object, minimum: int = 1, note: str = "") -> None:
    """An integer >= ``minimum`` (bools and floats such as 1.5 are refused, not truncated)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    _require(ok, f"{name}={value!r} must be an integer >= {minimum}{note}")


def _require_number(name: str, value: object, *, positive: bool, note: str = "") -> None:
    """A finite real number, > 0 (``positive``) or >= 0: ``inf`` or ``nan`` would only fail at step 1."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > 0 if positive else value >= 0)
    _require(ok, f"{name}={value!r} must be a finite number {'> 0' if positive else '>= 0'}{note}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _require_probability(name: str, value: object) -> None:
    _require(_is_number(value) and 0 <= value <= 1, f"{name}={value!r} must be a number in [0, 1]")


def _check_choice(name: str, value: object, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    _require(value in allowed, f"{name}={value!r} is not allowed; allowed: {', '.join(allowed)}")


def _check_strategy(name: str, value: str) -> None:
    try:
        parse_strategy(value)
    except ValueError as err:
        raise ConfigError(f"{name}={value!r}: {err}") from None


def validate(cfg: DictConfig) -> None:
    """Range and name checks on a composed train config (no data needed)."""
    check_top_keys(cfg, "train")
    _require_int("ipc", cfg.ipc, note=" (images per class)")
    _require_int("seed", cfg.seed, minimum=0)
    _require_int("iterations", cfg.iterations)
    _require_int("keep_checkpoints", cfg.keep_checkpoints, minimum=0, note=" (0 = only last.ckpt)")
    _require_int("eval_every", cfg.get("eval_every", 0), minimum=0, note=" (0 = off)")
    _require_int("diagnostics_every", cfg.get("diagnostics_every", 0), minimum=0, note=" (0 = off)")
    check_dataset_block(cfg.dataset)
    check_blocks(cfg)
    d = cfg.distill
    for key in ("factor", "inner_loops", "batch_real", "batch_syn_max", "save_every", "lr_size_base"):
        _require_int(f"distill.{key}", d[key])
    _validate_method(cfg)
    for key in ("lr_img", "lr_net"):
        _require_number(f"distill.{key}", d[key], positive=True)
    for key in ("momentum_img", "momentum_net", "weight_decay_net"):
        _require_number(f"distill.{key}", d[key], positive=False)
    _require_probability("distill.net_cutmix_p", d.net_cutmix_p)
    for key in ("match_dsa", "net_dsa"):
        _check_strategy(f"distill.{key}", d[key])
    _check_choice("distill.image_step", d.image_step, IMAGE_STEPS)
    _require(not (sharded_trainer(cfg) and d.image_step == "per_class"), PER_CLASS_SHARDED)
    check_trainer(cfg)
    precision = str(cfg.trainer.get("precision", "32-true"))
    _require(
        precision not in ("16-mixed", "16"),
        f"trainer.precision={precision!r} scales the loss through Lightning's backward, which the "
        "distillation passes (second-order, taken with torch.autograd.grad) do not use; allowed: a precision "
        "without a loss scaler (32-true, bf16-mixed, 16-true, 64-true)",
    )
    _validate_selection(cfg)
    build_parts(cfg)
    validate_evaluation(cfg.evaluation)
    known = smallest_class(cfg.dataset)
    if known is not None:  # the dataset fixes its class sizes: the data checks need no data
        validate_against_data(cfg, [known[0]], label=known[1])


PER_CLASS_SHARDED = (  # refused before work (validate) and by a module meeting a process group (prepare)
    "distill.image_step=per_class steps the images after each class in turn, which classes sharded over "
    "processes (trainer=ddp) cannot do; allowed with trainer=ddp: joint"
)


def sharded_trainer(cfg: DictConfig) -> bool:
    """Whether the ``trainer`` block runs several processes with classes (or evaluations) dealt out."""
    strategy = cfg.trainer.get("strategy")
    return OmegaConf.is_dict(strategy) and str(strategy.get("_target_", "")).endswith("ClassShardedDDP")


def _validate_method(cfg: DictConfig) -> None:
    """The method's choices, and its network feed's size: the one its feed reads, the others null."""
    d = cfg.distill
    _check_choice("distill.method", d.method, METHODS)
    _check_choice("distill.lr_rule", d.lr_rule, LR_RULES)
    _check_choice("distill.net_data", d.net_data, NET_DATA)
    _require_number("distill.warmup_epochs", d.warmup_epochs, positive=False)
    used = {"real": "n_data", "synthetic": "net_epochs", "none": None}[d.net_data]
    for key in ("n_data", "net_epochs"):
        if key == used:
            note = f" (distill.net_data={d.net_data} reads it)"
            if key == "net_epochs" and d[key] is None:
                stated = ", ".join(map(str, DC_NET_EPOCHS))
                note += f"; DC states it for IPC {stated} only: set it for ipc={cfg.ipc}"
            _require_int(f"distill.{key}", d[key], note=note)
        else:
            _require(
                d[key] is None,
                f"distill.{key}={d[key]!r} is not used by method={d.method} (distill.net_data={d.net_data}); "
                f"allowed: null",
            )
    _require(
        not (sharded_trainer(cfg) and d.net_data == "synthetic"),
        "distill.net_data=synthetic trains the network on every class's images, which classes sharded over "
        "processes (trainer=ddp) do not each hold; allowed with trainer=ddp: real, none",
    )


def _validate_selection(cfg: DictConfig) -> None:
    """The sampler's and the initialiser's sizes and choices."""
    s = cfg.sampler
    for key in ("n_clusters", "n_per_cluster", "interval", "batch_size", "max_iter"):
        if key in s:
            _require_int(f"sampler.{key}", s[key])
    for group in ("sampler", "init"):
        if "backend" in cfg[group]:
            _check_choice(f"{group}.backend", cfg[group].backend, BACKENDS)
        if "features" in cfg[group]:
            _check_choice(f"{group}.features", cfg[group].features, FEATURE_INPUTS)
    _validate_embedding(cfg)


def _validate_embedding(cfg: DictConfig) -> None:
    """Embedding chunks, and a subset large enough to select the batch from."""
    s = cfg.sampler
    for group in ("sampler", "init"):
        if "embed_chunk" in cfg[group]:
            _require_int(f"{group}.embed_chunk", cfg[group].embed_chunk)
    subset = s.get("embed_subset")
    if subset is not None:
        batch = int(s.n_clusters) * int(s.n_per_cluster) if "n_clusters" in s else int(s.batch_size)
        _require_int(
            "sampler.embed_subset", subset, minimum=batch, note=" (the batch it selects, or null = all)"
        )


def validate_evaluation(ev: DictConfig) -> None:
    """Checks on the ``evaluation`` block (shared by train and evaluate)."""
    check_schema_keys("evaluation", ev, EvaluationSchema)
    check_schema_keys("evaluation.periodic", ev.periodic, PeriodicSchema)
    check_schema_keys("evaluation.whole_protocol", ev.whole_protocol, WholeProtocolSchema)
    _require_int("evaluation.test_batch", ev.test_batch)
    _require(
        isinstance(ev.models, Sequence) and not isinstance(ev.models, str),
        f"evaluation.models={ev.models!r} must be a list, e.g. [convnet, resnet10]",
    )
    for name in ev.models:
        _check_choice("evaluation.models", name, list_models())
    for key in ("epochs", "repeats"):
        _require_int(f"evaluation.periodic.{key}", ev.periodic[key])
    _check_choice("evaluation.compile", ev.compile, COMPILE_MODES)
    _require(
        isinstance(ev.whole, bool),
        f"evaluation.whole={ev.whole!r} must be true or false (train the whole-set reference, or not)",
    )
    _check_protocol_values("evaluation", ev, auto_lr=True)
    _check_protocol_values("evaluation.whole_protocol", ev.whole_protocol)
    _require_int("evaluation.validation_per_class", ev.validation_per_class)
    _require_int("evaluation.lr_search_repeats", ev.lr_search_repeats)
    grid = ev.lr_grid
    _require(
        OmegaConf.is_list(grid) and len(grid) > 0 and all(_is_number(v) and v > 0 for v in grid),
        f"evaluation.lr_grid={grid!r} must be a non-empty list of lrs > 0, e.g. [0.003, 0.01, 0.03]",
    )


def _check_protocol_values(name: str, node: DictConfig, *, auto_lr: bool = False) -> None:
    """The training recipe of an evaluation block (``evaluation`` or its ``whole_protocol``).

    ``auto_lr``: the block's lr may also be ``auto`` (chosen on the validation split).
    """
    for key in ("repeats", "epochs", "batch_size"):
        _require_int(f"{name}.{key}", node[key])
    if not (auto_lr and node.lr == LR_AUTO):
        note = f" or {LR_AUTO!r} (chosen on the validation split)" if auto_lr else ""
        _require_number(f"{name}.lr", node.lr, positive=True, note=note)
    _require_number(f"{name}.lr_gamma", node.lr_gamma, positive=True)
    for key in ("momentum", "weight_decay"):
        _require_number(f"{name}.{key}", node[key], positive=False)
    _check_strategy(f"{name}.dsa", node.dsa)
    _require_probability(f"{name}.cutmix_p", node.cutmix_p)
    milestones = node.lr_milestones
    _require(
        OmegaConf.is_list(milestones) and all(_is_number(m) and 0 <= m <= 1 for m in milestones),
        f"{name}.lr_milestones={milestones!r} must be a list of fractions of training in [0, 1], "
        "e.g. [0.667, 0.833]",
    )


def _check_matmul_precision(cfg: DictConfig) -> None:
    value = cfg.trainer.get("matmul_precision", "highest")
    _check_choice("trainer.matmul_precision", value, MATMUL_PRECISIONS)


def check_trainer(cfg: DictConfig) -> None:
    """The ``trainer`` block's values that would otherwise fail only once the data is loaded.

    Its keys are checked against Lightning's ``Trainer`` inside the job (``workflow.check_trainer_keys``):
    reading that signature imports Lightning, which the command line's pre-check does not.
    """
    import torch

    t = cfg.trainer
    _check_matmul_precision(cfg)
    accelerator = t.get("accelerator", "auto")
    _check_choice("trainer.accelerator", accelerator, ACCELERATORS)
    _require(
        accelerator not in ("gpu", "cuda") or torch.cuda.is_available(),
        f"trainer.accelerator={accelerator} needs a CUDA device and none is visible here; allowed here: "
        "cpu, auto",
    )
    devices = t.get("devices", "auto")
    as_list = list(devices) if OmegaConf.is_list(devices) else None
    ok = (
        devices == "auto"
        or (isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1))
        or (as_list is not None and len(as_list) > 0 and all(isinstance(d, int) and d >= 0 for d in as_list))
    )
    _require(
        ok,
        f"trainer.devices={devices!r} is not allowed; allowed: auto, a count >= 1, -1 (all), or a list of "
        "device indices such as [0, 1]",
    )
    _require_int("trainer.num_nodes", t.get("num_nodes", 1))


def validate_eval(cfg: DictConfig) -> None:
    """Range and name checks on a composed ``dream_pl.evaluate`` config (no data needed)."""
    from dream_pl.evaluation.formats import EXPECTED
    from dream_pl.evaluation.sets import BASELINES

    check_top_keys(cfg, "eval")
    check_dataset_block(cfg.dataset)
    _require_int("ipc", cfg.ipc, note=" (images per class of a baseline)")
    _require_int("seed", cfg.seed, minimum=0)
    _require_int("repeats", cfg.repeats)
    validate_evaluation(cfg.evaluation)
    check_model_block(cfg.model, cfg.dataset)
    check_trainer(cfg)
    _validate_set_format(cfg)
    target = str(cfg.synthetic)
    if target not in BASELINES and not Path(target).exists():
        if cfg.format != "dream_pl":
            raise ConfigError(
                f"synthetic={target} does not exist; format={cfg.format} reads {EXPECTED[cfg.format]}"
            )
        raise ConfigError(
            f"synthetic={target} does not exist; give a synthetic.pt, a run directory, "
            f"or one of {', '.join(BASELINES)}"
        )
    known = smallest_class(cfg.dataset) if target in BASELINES else None
    if known is not None:
        check_baseline_ipc(cfg, *known)


def _validate_set_format(cfg: DictConfig) -> None:
    """``format`` and its options: known names, integers in range, and each option only where it is read.

    An option its format ignores is refused rather than dropped: ``factor=2`` on a DC file would otherwise
    look as if it had been applied.
    """
    from dream_pl.evaluation.formats import EXPERIMENT_FORMATS, FACTOR_FORMATS, FORMATS, ZCA_FORMATS
    from dream_pl.evaluation.sets import BASELINES

    fmt = cfg.format
    _check_choice("format", fmt, FORMATS)
    size = dataset_spec(cfg.dataset).size
    _require_int("factor", cfg.factor, note=f" (the multi-formation factor, 1..{size})")
    _require(
        cfg.factor <= size, f"factor={cfg.factor} is too large for {size}-pixel images; allowed: 1..{size}"
    )
    _require_int("experiment_index", cfg.experiment_index, minimum=0)
    _require(isinstance(cfg.zca, bool), f"zca={cfg.zca!r} must be true or false")
    for key, default, formats in (
        ("factor", 1, FACTOR_FORMATS),
        ("experiment_index", 0, EXPERIMENT_FORMATS),
        ("zca", False, ZCA_FORMATS),
    ):
        value = str(cfg[key]).lower() if isinstance(cfg[key], bool) else cfg[key]  # as typed: zca=true
        _require(
            cfg[key] == default or fmt in formats,
            f"{key}={value} is read only with format={' | '.join(formats)}, not format={fmt}",
        )
    _require(
        fmt == "dream_pl" or str(cfg.synthetic) not in BASELINES,
        f"format={fmt} describes a saved set; synthetic={cfg.synthetic} is a baseline built from the real "
        "training set (leave format unset)",
    )


def check_baseline_ipc(cfg: DictConfig, smallest: int, label: str | None = None) -> None:
    """``dream_pl.evaluate synthetic=<baseline>``: a subset baseline takes at most the smallest class.

    ``label``: what to call the smallest class (default: the dataset's name).
    """
    target = str(cfg.synthetic)
    _require(
        target == "whole" or cfg.ipc <= smallest,
        f"ipc={cfg.ipc} is too large for the {target} baseline: the smallest class of "
        f"{label or cfg.dataset.name} has {smallest} images; allowed: 1..{smallest}",
    )
    check_validation_split(cfg, smallest, label, 1 if target == "whole" else cfg.ipc)


def check_validation_split(cfg: DictConfig, smallest: int, label: str | None, baseline: int) -> None:
    """With ``evaluation.lr=auto``: the validation split and ``baseline`` images per class fit every class.

    The baseline draws from the images the split leaves.
    """
    ev = cfg.evaluation
    if ev.lr != LR_AUTO:
        return
    most = smallest - baseline
    _require(
        ev.validation_per_class <= most,
        f"evaluation.validation_per_class={ev.validation_per_class} is too large: the smallest class of "
        f"{label or cfg.dataset.name} has {smallest} images and {baseline} per class stay for the baseline; "
        f"allowed: 1..{most}",
    )


def validate_against_data(cfg: DictConfig, class_sizes: list[int], label: str | None = None) -> None:
    """Checks that need the loaded dataset: selections must fit in the smallest class.

    ``label``: what to call the smallest class (default: the dataset's name; a folder's: its path).
    """
    smallest = min(class_sizes)
    name = label or cfg.dataset.name
    where = f"the smallest class of {name} has {smallest} images; allowed: 1..{smallest}"
    s = cfg.sampler
    if "n_clusters" in s:
        _require(
            int(s.n_clusters) <= smallest,
            f"sampler.n_clusters (N) = {s.n_clusters} is too large: {where}",
        )
        total = int(s.n_clusters) * int(s.n_per_cluster)
        _require(
            total <= smallest,
            f"sampler N x n = {s.n_clusters} x {s.n_per_cluster} = {total} is too large: {where}",
        )
    if "batch_size" in s and "interval" in s:
        _require(
            int(s.batch_size) <= smallest,
            f"sampler.batch_size={s.batch_size} is too large: {where}",
        )
    if cfg.evaluation.enabled:
        check_validation_split(cfg, smallest, label, int(cfg.ipc))
    per_class = int(cfg.ipc) * int(cfg.distill.factor) ** 2
    if not str(cfg.init.get("_target_", "")).endswith("NoiseInit"):
        _require(
            per_class <= smallest,
            f"ipc x factor^2 = {cfg.ipc} x {cfg.distill.factor}^2 = {per_class} real images per class "
            "are needed "
            f"to initialise, but {where.split(';')[0]}",
        )


def protocol_from(ev: DictConfig, *, periodic: bool = False, whole: bool = False) -> EvalProtocol:
    """The ``evaluation`` block as an :class:`EvalProtocol`.

    ``periodic``: with the cheaper epochs and repeats of ``evaluation.periodic``. ``whole``: the recipe of
    ``evaluation.whole_protocol`` (the whole-set reference), with the block's test batch and execution
    (``stacked``, ``compile``), which do not change what is measured.
    """
    protocol = from_block(EvalProtocol, ev, "evaluation", lr=None if ev.lr == LR_AUTO else ev.lr)
    if periodic:
        protocol = replace(protocol, epochs=ev.periodic.epochs, repeats=ev.periodic.repeats)
    if whole:
        recipe = OmegaConf.to_container(ev.whole_protocol, resolve=True)
        recipe["lr_milestones"] = tuple(recipe["lr_milestones"])
        protocol = replace(protocol, **recipe)
    return protocol
