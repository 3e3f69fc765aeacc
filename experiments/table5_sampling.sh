#!/usr/bin/env bash
# Paper Table 5: sub-cluster count N x images per sub-cluster n on CIFAR-10 IPC 10 (the paper's cells have
# N*n <= 256; larger cells are extra), 3 seeds.
set -euo pipefail
python -m dream_pl.train -m experiment=cifar10_ipc10 \
  sampler.n_clusters=32,64,128,256 sampler.n_per_cluster=1,2,4,8 seed=0,1,2 "$@"
