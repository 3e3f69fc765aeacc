"""The plug-in study (benchmarks/table3.py): every cell is a valid run, and its report on hand-made jobs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from dream_pl.config import validate
from dream_pl.evaluation.scores import NOT_MEASURED
from dream_pl.evaluation.sets import WHOLE

BENCH = Path(__file__).parents[1] / "benchmarks"


def load_script():
    sys.path.insert(0, str(BENCH))  # table3 reads efficiency's curve helpers, as it does when run
    try:
        spec = importlib.util.spec_from_file_location("table3_bench", BENCH / "table3.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


table3 = load_script()


@pytest.mark.parametrize("cell", list(table3.CELLS))
def test_every_cell_is_a_run_the_checks_accept(compose_train, cell):
    cfg = compose_train(["experiment=table3_cpu", *table3.cell_overrides(cell, "cpu", 500)])
    validate(cfg)
    method, rm, init, _ = table3.CELLS[cell]
    assert cfg.distill.method == method
    assert cfg.sampler._target_.endswith("RepresentativeSampler") is rm
    assert cfg.init._target_.endswith("KMeansInit") is init
    if rm:  # DREAM's N is the method's own real batch, re-selected every 5 inner steps
        assert (cfg.sampler.n_clusters, cfg.sampler.interval) == (cfg.distill.batch_real, 5)


def test_the_full_scale_keeps_each_methods_own_schedule(compose_train):
    dm = compose_train(["experiment=table3_cpu", *table3.cell_overrides("dm", "none", 500)])
    dc = compose_train(["experiment=table3_cpu", *table3.cell_overrides("dc", "none", 500)])
    assert (dm.iterations, dm.eval_every, dc.iterations, dc.distill.inner_loops) == (20000, 2000, 1000, 1)


def write_job(root: Path, cell: str, seed: int, final: float, curve: list[float], ratio: float) -> None:
    job = root / cell / f"seed{seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / "csv").mkdir()
    overrides = ["experiment=table3_cpu", *table3.cell_overrides(cell, "cpu", 500), f"seed={seed}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "eval.json").write_text(json.dumps([{"set": "distilled", "model": "convnet", "mean": final}]))
    rows = ["step,iteration,eval/convnet/acc,distill/diag/graddist_ratio"]
    rows += [f"{10 * i},{2.0 * i},{acc},{ratio}" for i, acc in enumerate(curve)]
    (job / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_the_report_times_each_cell_against_its_methods_baseline(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_job(root, "dc", seed, 40.0 + seed, [30.0, 35.0, 38.0], 1.0)
        write_job(root, "dc+rm", seed, 42.0 + seed, [30.0, 38.5, 40.0], 0.9)
    for seed, random in ((0, 29.0), (1, 31.0)):  # dream_pl.evaluate runs of random real images; one whole set
        ref = root / "references" / f"seed{seed}"
        ref.mkdir(parents=True)
        rows = [{"set": "random real (ipc 1)", "mean": random}] + [{"set": WHOLE, "mean": 90.0}] * (seed == 0)
        (ref / "eval.json").write_text(json.dumps(rows))
    refs = table3.references(root / "references")
    assert refs == {"random": 30.0, "random_runs": 2, "whole": 90.0, "whole_runs": 1}
    text = table3.summarise(table3.collect(root), tmp_path, "table3_cpu", "cpu", root, refs)
    main_table = text.split("\n\n")[1]  # the heading, then the table of finals (the curves follow)
    rows = {
        line.split(" | ")[0].strip("| "): line for line in main_table.splitlines() if line.startswith("| dc")
    }
    assert "| 40.5 ± 0.5 | +10.5 | +49.5 | 44.9 |" in rows["dc"]  # IOR 40.5 - 30, HLR 90 - 40.5
    assert "| dc | 2 | 4 | 0.90 |" in rows["dc+rm"]  # reaches dc's curve end (38.0) at outer iteration 2 of 4
    assert "random real images of the same IPC (30.0 % (mean of 2 runs))" in text
    assert (tmp_path / "table3.png").is_file()
    bare = table3.summarise(table3.collect(root), tmp_path, "table3_cpu", "cpu", root, {})
    assert f"whole training set ({NOT_MEASURED})" in bare
    assert "| 40.5 ± 0.5 | - | - | 44.9 |" in bare
