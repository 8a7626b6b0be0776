#!/usr/bin/env bash
# The main job: install what is missing, build, train the default model on the built-in corpus
# and print samples. Extra arguments go to `moe train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh main
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF >/dev/null
cmake --build build -j"$(nproc)" --target moe
./build/moe train "$@"
