#!/usr/bin/env bash
# moe generate in fp32 and in int8 on the same checkpoint, prompt and greedy decoding, in one
# run: the two alternate REPS times (so both see the same machine load); prints every run's
# tokens/s (from the line `moe generate` writes to stderr), the medians and int8 / fp32.
#
#   bench/bench_generate.sh [--checkpoint DIR] [--tokens 200] [--reps 5] [--prompt TEXT]
#                           [--threads N] [--moe build/moe]
#
# The int8 side is the folder `moe quantize` writes from DIR (int8 weights as stored, as a
# served model would be). Without --checkpoint, the default tiny model is trained for 60 steps
# into a temporary folder first (about a minute on 2 cores). A benchmark, not a test: it gates
# nothing on time. It prints the load average before and after: on a shared machine, compare
# only runs with a similar load.
set -euo pipefail

ckpt="" tokens=200 reps=5 prompt="ROMEO:" threads="" moe="build/moe"
while [ $# -gt 0 ]; do
  case "$1" in
    --checkpoint) ckpt="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --prompt) prompt="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --moe) moe="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bench_generate: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$moe" ] || { echo "bench_generate: no moe binary at '$moe'; build first or pass --moe" >&2; exit 2; }

work=$(mktemp -d /tmp/bench_generate.XXXXXX)
trap 'rm -rf "$work"' EXIT
if [ -z "$ckpt" ]; then
  echo "no --checkpoint: training the default tiny model for 60 steps into $work/run"
  "$moe" train --steps 60 --samples 0 --out "$work/run" > "$work/train.log"
  ckpt="$work/run"
fi
"$moe" quantize --checkpoint "$ckpt" --out "$work/int8" --dtype int8

thread_flag=()
[ -n "$threads" ] && thread_flag=(--threads "$threads")
echo "checkpoint $ckpt, prompt '$prompt', $tokens new tokens greedy, $reps reps each," \
     "threads ${threads:-all ($(nproc))}"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

run() {  # $1 = label, $2 = folder; prints tokens/s, keeps the text in $work/$1.txt
  "$moe" "${thread_flag[@]}" generate --checkpoint "$2" --prompt "$prompt" --temperature 0 \
    --max-new-tokens "$tokens" > "$work/$1.txt" 2> "$work/$1.err"
  sed -n 's/.*: \([0-9.]*\) tokens\/s$/\1/p' "$work/$1.err"
}
fp32=() int8=()
for ((i = 1; i <= reps; ++i)); do
  a=$(run fp32 "$ckpt")
  b=$(run int8 "$work/int8")
  fp32+=("$a") int8+=("$b")
  echo "rep $i: fp32 $a tokens/s, int8 $b tokens/s"
done
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
grep '^precision' "$work/fp32.err" | sed 's/^/fp32 /'
grep '^precision' "$work/int8.err" | sed 's/^/int8 /'

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
m32=$(median "${fp32[@]}")
m8=$(median "${int8[@]}")
same=$(cmp -s "$work/fp32.txt" "$work/int8.txt" && echo "the same text" || echo "different text (int8 rounding changed a greedy choice)")
echo "median tokens/s: fp32 $m32, int8 $m8, int8/fp32 $(awk -v a="$m8" -v b="$m32" 'BEGIN {printf "%.2fx", a / b}'); $same"
