#!/usr/bin/env bash
# Paper Table 3: DREAM's components on CIFAR-10 IPC 10 — representative matching (sampler) x clustering init,
# 3 seeds each. Read accuracy at every eval_every iterations to get the "Iter" column (benchmarks/efficiency.py
# runs the same grid on FashionMNIST and computes it).
set -euo pipefail
python -m dream_pl.train -m experiment=cifar10_ipc10 \
  sampler=random,dream init=random,kmeans seed=0,1,2 "$@"
