"""DREAM's clustering init on its own: K-means starts x feature space, at IPC 1 and 10, before any matching.

Issue 21, item 4: the init wants a diverse set of ipc x f^2 images, the matching batch a representative
one, so each component's K-means options are chosen from their own numbers. This script measures the init:
per (IPC, seed, option) it builds a run's engine exactly as ``dream_pl.train`` does (the seeded network of
outer iteration 0, ``init=kmeans`` with the option's ``init.kmeans_init`` and ``init.features``, plus
``init=random``: random real images, IDC's init, as the floor), decodes the initial set and evaluates it
under the preset's protocol. The same options after distillation are the ``dream+pp/px/pppx`` cells of
``benchmarks/table3.py``.
Writes init_options_ipc<ipcs>.md into --out.
Run: python benchmarks/init_options.py [--ipcs 1,10] [--seeds 0,1,2] [overrides, e.g. evaluation.epochs=300]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from hydra import compose, initialize_config_dir

from dream_pl.config import CONF_DIR, protocol_from
from dream_pl.data import RealSet, load_dataset
from dream_pl.engine import Engine
from dream_pl.evaluation.suite import set_evaluator
from dream_pl.workflow import engine_parts

OPTIONS = {  # label: init overrides
    "random real (IDC)": ["init=random"],
    "kmeans, uniform starts, normalised (default)": ["init=kmeans"],
    "kmeans, k-means++ starts, normalised": ["init=kmeans", "init.kmeans_init=kmeans++"],
    "kmeans, uniform starts, pixels (the authors')": ["init=kmeans", "init.features=pixels"],
    "kmeans, k-means++ starts, pixels": ["init=kmeans", "init.kmeans_init=kmeans++", "init.features=pixels"],
}


def initial_accuracy(overrides: list[str], loaded: dict) -> tuple[list[float], float]:
    """The evaluated initial set of one run config: per-repeat accuracies (%) and seconds.

    ``loaded``: datasets read so far, by name (each is read once).
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if cfg.dataset.name not in loaded:
        data = load_dataset(cfg.dataset.name, cfg.data_dir, **cfg.dataset.get("options", {}))
        loaded[cfg.dataset.name] = data, RealSet.from_data(data, "train")
    data, real = loaded[cfg.dataset.name]
    engine = Engine(**engine_parts(cfg, real, data.spec))
    engine.prepare()
    engine.initialize()
    _, images, labels = engine.gathered()
    result = set_evaluator(cfg, cfg.model.name, data)(
        images.detach().cpu(), labels.cpu(), protocol=protocol_from(cfg.evaluation)
    )
    return [100 * a for a in result.accuracies], result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="table3_cpu", help="experiment preset (dataset, width, protocol)")
    parser.add_argument("--ipcs", default="1,10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="docs/table3")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    loaded: dict = {}
    lines = [
        f"preset `{args.preset}` with {' '.join(args.overrides) or 'no overrides'}; the initial set of each "
        f"option, evaluated before any matching; mean ± std over seeds {args.seeds} of each seed's mean over "
        "the protocol's repeats",
        "",
        "| IPC | init | top-1 (%) | per seed | seconds |",
        "|---|---|---|---|---|",
    ]
    for ipc in (int(i) for i in args.ipcs.split(",")):
        for label, init in OPTIONS.items():
            means, seconds = [], 0.0
            for seed in seeds:
                run = [f"experiment={args.preset}", f"ipc={ipc}", f"seed={seed}"]
                accs, took = initial_accuracy([*run, *init, *args.overrides], loaded)
                means.append(statistics.fmean(accs))
                seconds += took
                print(f"ipc {ipc} seed {seed} {label}: {accs}", flush=True)
            std = statistics.pstdev(means) if len(means) > 1 else 0.0
            per_seed = ", ".join(f"{m:.1f}" for m in means)
            mean = statistics.fmean(means)
            lines.append(f"| {ipc} | {label} | {mean:.1f} ± {std:.1f} | {per_seed} | {seconds:.0f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"init_options_ipc{args.ipcs.replace(',', '_')}.md").write_text(report)


if __name__ == "__main__":
    main()
