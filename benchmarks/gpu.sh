#!/usr/bin/env bash
# Every GPU figure of the speed work in one go, on one H100/H200, under about 9 minutes:
#   tests:      the GPU-only tests (captured == eager steps, in float64; evaluator with/without capture);
#   step:       FashionMNIST inner step, random vs DREAM, eager vs replayed from CUDA graphs,
#               clustering event and its embedding pass; step_tf32: the same with TF32 matmuls;
#   cifar:      the CIFAR-10 and CIFAR-100 shapes on random tensors (eager vs graphs; CIFAR-100 graphs only);
#   evaluator:  5 repeats stacked on 400 images, evaluation.compile off vs on, scaled to 1,000 epochs;
#   train:      the end-to-end rate of experiment=fashion_mnist_ipc10 (two lengths: their difference is the
#               steady per-step rate, clustering events included, start-up excluded);
#   efficiency: the Table 3 GPU preset (efficiency_gpu) for as long as the remaining budget allows.
# Run from the repository root on the GPU machine: bash benchmarks/gpu.sh [results dir]
# Needs torch with CUDA, torchvision, pytorch_lightning, torchmetrics, matplotlib; hydra-core, omegaconf,
# antlr4-python3-runtime 4.9.3 and mlxtend are installed from .whl/ when present (benchmarks/gpu_wheels.sh
# makes them); FashionMNIST's four IDX files in $DREAM_DATA_DIR (default: .data/fashion-mnist).
# Smoke test on a CPU: PATH=.venv/bin:$PATH DEVICE=cpu STEPS=1 STAGES=step bash benchmarks/gpu.sh /tmp/smoke
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:src
else
  export PYTHONPATH=src
fi
export DREAM_DATA_DIR=${DREAM_DATA_DIR:-$PWD/.data/fashion-mnist} PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}
steps=${STEPS:-20}
stages=${STAGES:-tests,step,cifar,evaluator,train,efficiency}
budget=${BUDGET:-540}  # seconds for the whole script; the efficiency stage takes what is left
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$out/summary.txt"; }
stage() {  # stage <seconds> <name> <command...>: output to $out/<name>.txt, time limit per stage
  local limit=$1 name=$2; shift 2
  log "$name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  log "$name: exit $rc after $((SECONDS - start)) s"
  tail -n "${TAIL:-12}" "$out/$name.txt" | tee -a "$out/summary.txt"
}
has() { [[ ",$stages," == *",$1,"* ]]; }

log "commit $commit; $(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> "$out/summary.txt" 2>&1

if has tests; then
  TAIL=6 stage 150 tests python3 -m pytest -q -p no:cacheprovider -m gpu -o addopts="" \
    tests/test_engine.py tests/test_methods.py tests/test_augment.py tests/test_evaluation.py \
    tests/test_evaluator_graphs.py tests/test_clustering.py
fi
step=(python3 benchmarks/step.py --device "$device" --steps "$steps" --warmup 3 --data-dir "$DREAM_DATA_DIR")
if has step; then
  stage 150 step "${step[@]}" --graphs false,true
  stage 90 step_tf32 "${step[@]}" --graphs true --matmul-precision high
fi
if has cifar; then
  stage 120 step_cifar10 "${step[@]}" --dataset cifar10 --graphs false,true
  stage 120 step_cifar100 "${step[@]}" --dataset cifar100 --graphs true --steps 5
fi
if has evaluator; then
  stage 120 evaluator python3 benchmarks/evaluator.py --device "$device" --dataset fashion_mnist --epochs 100 \
    --repeats 5 --modes stacked --compile off,on --data-dir "$DREAM_DATA_DIR"
fi
if has train; then
  train=(python3 -m dream_pl.train experiment=fashion_mnist_ipc10 "trainer.accelerator=${device/cuda/gpu}"
         evaluation.enabled=false logger=csv "data_dir=$DREAM_DATA_DIR" ${TRAIN_EXTRA:-})
  stage 90 train_1 "${train[@]}" iterations=1 "out_dir=$out/train_1"
  stage 150 train_3 "${train[@]}" iterations=3 "out_dir=$out/train_3"
  python3 - "$out" <<'PY' | tee -a "$out/summary.txt"
import re
import sys
from datetime import datetime
from pathlib import Path
out = Path(sys.argv[1])
def span(name: str) -> float:
    """Seconds from the data-read log line to the run's last line (start-up before data excluded)."""
    stamp = r"\[(\d+-\d+-\d+ \d+:\d+:\d+,\d+)\]\[dream_pl\.(?:workflow|data)\]"
    times = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in re.findall(stamp, (out / f"{name}.txt").read_text())]
    return (times[-1] - times[0]).total_seconds() if len(times) >= 2 else float("nan")
a, b = span("train_1"), span("train_3")
print(f"train rate (experiment=fashion_mnist_ipc10, events included): {(b - a) / 200:.4f} s per inner step "
      f"(data-to-end {a:.1f} s for 100 steps, {b:.1f} s for 300 steps)")
PY
fi
left=$((budget - SECONDS))
if has efficiency && [ "$left" -gt 60 ]; then
  stage "$left" efficiency_gpu python3 -m dream_pl.train experiment=efficiency_gpu \
    "data_dir=$DREAM_DATA_DIR" iterations=2 eval_every=1 evaluation.epochs=300 "out_dir=$out/efficiency_gpu"
fi
log "done in $SECONDS s"
