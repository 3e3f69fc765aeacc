#!/usr/bin/env bash
# Paper Table 1 (and Table 2 for TinyImageNet): DREAM at IPC 1/10/50 on every benchmark, 5 evaluation repeats.
# Needs the datasets under data_dir (see README "Data"); a GPU. Extra overrides pass through, e.g. seed=1.
set -euo pipefail
python -m dream_pl.train -m \
  experiment=mnist_ipc1,mnist_ipc10,mnist_ipc50,fashion_mnist_ipc1,fashion_mnist_ipc10,fashion_mnist_ipc50,svhn_ipc1,svhn_ipc10,svhn_ipc50,cifar10_ipc1,cifar10_ipc10,cifar10_ipc50,cifar100_ipc1,cifar100_ipc10,cifar100_ipc50,tiny_imagenet_ipc1,tiny_imagenet_ipc50 \
  "$@"
