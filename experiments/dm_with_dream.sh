#!/usr/bin/env bash
# DREAM plugged into distribution matching (paper Sec. 4.3: "up to 5.8% for distribution matching"): DM with random vs
# representative real batches, CIFAR-10 IPC 10, 3 seeds.
set -euo pipefail
python -m dream_pl.train -m experiment=cifar10_ipc10 matcher=distribution sampler=random,dream seed=0,1,2 "$@"
