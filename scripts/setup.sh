#!/usr/bin/env bash
# Installs the Debian 12 packages moe.cpp needs (apt-get when root; otherwise prints the line).
# usage: scripts/setup.sh [main|test|bench]
set -euo pipefail
what=${1:-main}
pkgs=(g++ cmake make libdnnl-dev nlohmann-json3-dev libcli11-dev libtomlplusplus-dev libssl-dev)
if [[ $what == test || $what == bench ]]; then
  pkgs+=(libgtest-dev python3 python3-torch python3-numpy)
  # clang's libFuzzer runs the comm parser fuzz test; Open MPI's mpirun starts the comm and
  # training tests' jobs as a user's cluster would (tests/integration/launchers.h). Its headers
  # come too: with mpirun but without them CMake's FindMPI (bench/comm) finds a broken MPI.
  pkgs+=(clang libclang-rt-14-dev openmpi-bin libopenmpi-dev)
fi
if [[ $what == bench ]]; then
  # PyTorch's reference run uses OpenBLAS with OpenMP threads, as a PyTorch user would have.
  pkgs+=(libopenblas0-openmp)
  # bench/comm/compare.sh measures moe::comm against Open MPI 4.1 and Gloo.
  pkgs+=(libgloo-dev)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing packages; run as root:"
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
fi
