#!/usr/bin/env bash
# Paper Table 4: distil on ConvNet-3 and on ResNet-10, evaluate each set on ConvNet-3, ResNet-10 and DenseNet-121.
set -euo pipefail
python -m dream_pl.train -m experiment=cifar10_ipc10 model=convnet,resnet10 \
  'evaluation.models=[convnet,resnet10,densenet121]' seed=0,1,2 "$@"
