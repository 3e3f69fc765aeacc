#!/usr/bin/env bash
# Every GPU figure of the speed work in one go, on one H100/H200, under about 9 minutes:
#   1. the inner step (random vs DREAM sampler, one clustering event) with classes one at a time and all in
#      one batched pass, and with TF32 matmuls (trainer.matmul_precision=high);
#   2. the evaluator: 5 repeats stacked on 400 images, scaled from --epochs to 1,000 epochs;
#   3. the end-to-end train rate of experiment=fashion_mnist_ipc10 (two lengths: the difference is the
#      steady per-step rate, clustering events included, start-up excluded);
#   4. the Table 3 GPU preset (efficiency_gpu) for as long as the remaining budget allows.
# Run from the repository root on the GPU machine: bash benchmarks/gpu.sh [results dir]
# Needs torch with CUDA, torchvision, pytorch_lightning, torchmetrics, matplotlib; hydra-core, omegaconf and
# antlr4-python3-runtime 4.9.3 are installed from .whl/ when present (benchmarks/gpu_wheels.sh makes them);
# FashionMNIST's four IDX files in $DREAM_DATA_DIR (default: .data/fashion-mnist, see gpu_wheels.sh).
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
export DREAM_DATA_DIR=${DREAM_DATA_DIR:-$PWD/.data/fashion-mnist}
device=${DEVICE:-cuda}  # DEVICE=cpu STEPS=1 STAGES=step: a smoke test of the script on a CPU
steps=${STEPS:-30}
stages=${STAGES:-step,evaluator,train,efficiency}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$out/summary.txt"; }
stage() {  # stage <seconds> <name> <command...>: output to $out/<name>.txt, time limit per stage
  local limit=$1 name=$2; shift 2
  log "$name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  log "$name: exit $rc after $((SECONDS - start)) s"
  tail -n 12 "$out/$name.txt" | tee -a "$out/summary.txt"
}

log "commit $commit; $(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> "$out/summary.txt" 2>&1

step=(python3 benchmarks/step.py --device "$device" --steps "$steps" --data-dir "$DREAM_DATA_DIR")
if [[ $stages == *step* ]]; then
  stage 100 step_loop "${step[@]}" --class-chunk 1
  stage 100 step_batched "${step[@]}" --class-chunk 0
  stage 100 step_batched_tf32 "${step[@]}" --class-chunk 0 --matmul-precision high
fi
if [[ $stages == *evaluator* ]]; then
  stage 90 evaluator python3 benchmarks/evaluator.py --device "$device" --dataset fashion_mnist --epochs 100 \
    --repeats 5 --modes stacked --data-dir "$DREAM_DATA_DIR"
fi
if [[ $stages == *train* ]]; then
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
left=$((540 - SECONDS))
if [[ $stages == *efficiency* ]] && [ "$left" -gt 60 ]; then
  stage "$left" efficiency_gpu python3 -m dream_pl.train experiment=efficiency_gpu \
    "data_dir=$DREAM_DATA_DIR" iterations=2 eval_every=1 evaluation.epochs=300 "out_dir=$out/efficiency_gpu"
fi
log "done in $SECONDS s"
