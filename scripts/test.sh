#!/usr/bin/env bash
# Every test: install what is missing, build everything, run ctest (unit, PyTorch parity,
# integration). ctest's summary line ends the output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-test -j"$(nproc)"
cd build-test
# ctest lists skipped tests after its summary; repeat the summary line so it ends the output.
set +e
ctest --output-on-failure --timeout 900 -j"$(nproc)" 2>&1 | tee ctest.log
rc=${PIPESTATUS[0]}
grep -E "tests passed, [0-9]+ tests failed out of" ctest.log | tail -n 1
exit "$rc"
