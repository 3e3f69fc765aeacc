"""The whole-set reference: each evaluation architecture trained on every training image, once, then cached.

HLR and the fractions of the whole-to-random gap (:mod:`dream_pl.evaluation.scores`) need the accuracy of
the whole training set under a stated protocol (``evaluation.whole_protocol``). That training costs far
more than a set's evaluation (50 epochs of 50,000 images against 1,000 epochs of 100), and its result
depends only on the dataset, the architecture, the protocol and the seed, never on the set being scored; so
it is measured once per such combination and kept as JSON in ``<data_dir>/references/<fingerprint>.json``,
beside the data it was measured on. ``evaluation.whole=true`` trains what is missing; a cached reference is
read whatever ``evaluation.whole`` says; with neither, the whole-set scores are "not measured".
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dream_pl.data import RealData
from dream_pl.data.folder import FOLDER
from dream_pl.evaluation.sets import WHOLE, baseline_set
from dream_pl.evaluation.suite import evaluate_sets
from dream_pl.files import atomic_write
from dream_pl.schemas import EvalProtocol

log = logging.getLogger("dream_pl.evaluation.references")

REFERENCE_DIR = "references"  # under data_dir
MODEL_BLOCK_KEYS = ("_target_", "_partial_")  # Hydra's keys of the model block: not knobs of the network


def model_knobs(cfg: DictConfig, name: str) -> dict[str, Any]:
    """Architecture ``name`` as :func:`dream_pl.evaluation.suite.network_for` builds it.

    The ``model`` block's knobs apply when it names ``name`` (a ``null`` knob is the constructor's default,
    as in ``create_model``); another architecture is built with its defaults, so its name says it all.
    """
    if name != cfg.model.name:
        return {"name": name}
    block = OmegaConf.to_container(cfg.model, resolve=True)
    return {k: v for k, v in block.items() if k not in MODEL_BLOCK_KEYS and v is not None}


def content_digest(real: RealData) -> str:
    """A digest of the training images and labels themselves.

    A folder dataset's options (its root) stay the same when its files change; a named dataset's do not.
    """
    h = hashlib.blake2b(digest_size=8)
    for tensor in (real.train_images, real.train_labels):
        h.update(tensor.contiguous().cpu().numpy().data)
    return h.hexdigest()


def fingerprint_inputs(
    cfg: DictConfig, name: str, protocol: EvalProtocol, content: str | None = None
) -> dict[str, Any]:
    """What the whole-set accuracy of architecture ``name`` depends on: data, network, protocol, seed.

    ``content``: the training set's :func:`content_digest`, for data that its options do not pin down (a
    folder dataset).

    ``protocol`` is the whole set's (``dream_pl.config.protocol_from(..., whole=True)``: resolved, its DSA
    the dataset's); only its recipe counts (:meth:`EvalProtocol.recipe_fields`): how it executes
    (``stacked``, ``compile``, ``test_batch``) does not change the accuracies, so a reference measured on a
    GPU serves a CPU run and the other way round.
    """
    options = cfg.dataset.get("options")
    options = OmegaConf.to_container(options, resolve=True) if OmegaConf.is_config(options) else options
    inputs = {
        "dataset": {"name": cfg.dataset.name, "options": dict(options or {})}
        | ({"content": content} if content else {}),
        "model": model_knobs(cfg, name),
        "protocol": {key: getattr(protocol, key) for key in protocol.recipe_fields()},
        "seed": cfg.seed,
    }
    return json.loads(json.dumps(inputs))  # tuples as lists: the form the cached file holds


def fingerprint(inputs: dict[str, Any]) -> str:
    """``<dataset>-<model>-<16 hex digits>``: a stable hash of ``inputs`` (keys sorted), named for people."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{inputs['dataset']['name']}-{inputs['model']['name']}-{digest}"


def reference_path(cfg: DictConfig, inputs: dict[str, Any]) -> Path:
    """Where the reference of ``inputs`` is cached: ``<data_dir>/references/<fingerprint>.json``."""
    return Path(cfg.data_dir) / REFERENCE_DIR / f"{fingerprint(inputs)}.json"


def read_reference(path: Path, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The reference cached at ``path``; None when there is none, or the file is not one for ``inputs``.

    A damaged file or one of other inputs (a hash collision, an edited file) is said and ignored: it is
    retrained over with ``evaluation.whole=true``, never read as a number it is not.
    """
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("ignoring the whole-set reference %s: it cannot be read (%s)", path, err)
        return None
    if not isinstance(record, dict) or record.get("inputs") != inputs or not record.get("accuracies"):
        log.warning("ignoring the whole-set reference %s: it was not measured with this run's inputs", path)
        return None
    return record


def write_reference(path: Path, inputs: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Cache the whole-set row of one architecture at ``path`` (whole or not at all); returns the record."""
    record = {
        "fingerprint": path.stem,
        "inputs": inputs,
        "model": row["model"],
        "images": row["images"],
        "accuracies": row["accuracies"],
        "mean": row["mean"],
        "std": row["std"],
        "epochs": row["epochs"],
        "repeats": row["repeats"],
        "protocol": row["protocol"],
        "seconds": row["seconds"],
        "extra": row.get("extra", {}),
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=2).encode()))
    return record


def reference_row(record: dict[str, Any], path: Path, *, cached: bool) -> dict[str, Any]:
    """The eval.json row of a reference: the whole real set's accuracy, saying where it is kept."""
    return {
        "set": WHOLE,
        "model": record["model"],
        "ipc": None,
        "images": record["images"],
        "accuracies": record["accuracies"],
        "mean": record["mean"],
        "std": record["std"],
        "epochs": record["epochs"],
        "repeats": record["repeats"],
        "protocol": record["protocol"],
        "seconds": record["seconds"],
        "extra": {**record.get("extra", {}), "reference": str(path), "cached": cached},
    }


def whole_references(
    cfg: DictConfig, real: RealData, protocol: EvalProtocol, *, write: bool = True
) -> list[dict[str, Any]]:
    """Rows of the whole-set reference of every architecture of ``evaluation.models`` that has one.

    A cached reference is read; one missing is trained now under ``protocol`` (``evaluation.whole_protocol``
    with the block's execution settings, from ``dream_pl.config.protocol_from(..., whole=True)``) when
    ``evaluation.whole`` is true (all missing architectures in one :func:`evaluate_sets` call, so a sharded
    run deals its repeats out) and cached unless ``write`` is false (the processes of a sharded run other
    than rank 0); otherwise it is left out, and its scores say "not measured".
    """
    rows, missing = {}, {}
    content = content_digest(real) if cfg.dataset.name == FOLDER else None
    for name in cfg.evaluation.models:
        inputs = fingerprint_inputs(cfg, name, protocol, content)
        path = reference_path(cfg, inputs)
        record = read_reference(path, inputs)
        if record is not None:
            log.info("whole-set reference for %s: %.1f%%, cached in %s", name, record["mean"], path)
            rows[name] = reference_row(record, path, cached=True)
        elif cfg.evaluation.whole:
            missing[name] = (inputs, path)
    if missing:
        log.info("training the whole-set reference (%s) for %s", protocol.describe(), ", ".join(missing))
        whole = {WHOLE: baseline_set("whole", real, 0)}
        for row in evaluate_sets(cfg, real, whole, protocol, models=list(missing)):
            inputs, path = missing[row["model"]]
            record = write_reference(path, inputs, row) if write else {**row, "inputs": inputs}
            rows[row["model"]] = reference_row(record, path, cached=False)
    return [rows[name] for name in cfg.evaluation.models if name in rows]
