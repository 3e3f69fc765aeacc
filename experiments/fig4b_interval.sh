#!/usr/bin/env bash
# Paper Fig. 4(b): clustering interval I_int on CIFAR-10 IPC 10, 3 seeds.
set -euo pipefail
python -m dream_pl.train -m experiment=cifar10_ipc10 sampler.interval=1,5,10,20,50 seed=0,1,2 "$@"
