#!/usr/bin/env bash
# An emulated cluster on one machine (GitHub issue 3, item 5): M "hosts", each a network
# namespace with K ranks, joined through a switch namespace (a Linux bridge) by veth pairs
# whose both ends are shaped with `tc qdisc tbf` to a bandwidth cap. Ranks of one host talk
# over that namespace's loopback (or shared memory), so only traffic between hosts is slow -
# the shape of a real cluster with fast intra-node and slow inter-node links. Each host runs
#   moe launch --nnodes M --node-rank R --master-addr 10.213.0.1 --nproc-per-node K --
#       moe comm-bench --op all_reduce --algo ALGO ...
# with MOE_HOST_ID=hostR, once per algorithm, and the busbw of each algorithm is printed with
# the link-limited bound for a flat ring (busbw <= link rate) and for a two-level all_reduce
# (link rate * ((N-1)/N) / ((M-1)/M), N = M*K ranks). With --op all_to_all the algorithms are
# all_to_all ones (--algo-a2a, default pairwise,two_level); both move the same bytes across
# each host's link, so they share one bound: link rate * (N-1) / (K * (N-K)).
#
# usage: scripts/emulate_cluster.sh [--hosts 2] [--nproc-per-node 2] [--rate-mbit 200]
#          [--size 16M] [--iters 5] [--warmup 1] [--op all_reduce|all_to_all]
#          [--algos ring,hier | pairwise,two_level] [--delay-ms D] [--moe PATH]
#          [--min-speedup X] [--quick]
#   --quick          the ctest case: 2 hosts x 4 ranks, 100 Mbit/s, 8 MiB, 3 iters, ring vs
#                    hier, and --min-speedup 1.3 unless given (link-limited bound: 1.75)
#   --min-speedup X  exit 1 unless busbw(second algo) >= X * busbw(first algo) (the ratio of
#                    their times per call: same size, same ranks)
#   --delay-ms D     also add D ms of delay with netem (this project's test kernel has no
#                    netem: the script then says so and exits 77)
# Exit codes: 0 ran (and the speedup held), 1 failed, 77 skipped: no root / CAP_NET_ADMIN,
# no ip or tc, namespaces cannot be made, tbf missing, or the moe binary has no such algorithm.
# Everything it makes (namespaces, veths, processes in them) is removed on exit, also on
# failure and Ctrl-C.
set -uo pipefail

hosts=2 nproc=2 rate_mbit=200 size=16M iters=5 warmup=1 algos= op=all_reduce
delay_ms= moe= min_speedup= quick=0
while (($#)); do
  case $1 in
    --hosts) hosts=$2; shift 2 ;;
    --nproc-per-node) nproc=$2; shift 2 ;;
    --rate-mbit) rate_mbit=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --algos) algos=$2; shift 2 ;;
    --op) op=$2; shift 2 ;;
    --delay-ms) delay_ms=$2; shift 2 ;;
    --moe) moe=$2; shift 2 ;;
    --min-speedup) min_speedup=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "emulate_cluster: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done
if ((quick)); then
  hosts=2 nproc=4 rate_mbit=100 size=8M iters=3 warmup=1 algos=ring,hier op=all_reduce
  min_speedup=${min_speedup:-1.3}
fi
case $op in
  all_reduce) algo_flag=--algo; algos=${algos:-ring,hier} ;;
  all_to_all) algo_flag=--algo-a2a; algos=${algos:-pairwise,two_level} ;;
  *) echo "emulate_cluster: --op must be all_reduce or all_to_all" >&2; exit 2 ;;
esac
skip() { echo "emulate_cluster: SKIP: $*"; exit 77; }
die() { echo "emulate_cluster: FAIL: $*" >&2; exit 1; }

((hosts >= 2 && hosts <= 4)) || die "--hosts must be 2 to 4"
((nproc >= 1)) || die "--nproc-per-node must be at least 1"
here=$(cd "$(dirname "$0")" && pwd)
if [[ -z $moe ]]; then
  for c in "$here/../build/moe" "$here/../build-release/moe"; do [[ -x $c ]] && { moe=$c; break; }; done
fi
[[ -n $moe && -x $moe ]] || die "no moe binary (build it, or pass --moe PATH)"
moe=$(cd "$(dirname "$moe")" && pwd)/$(basename "$moe")

# --- can we make namespaces here? ---------------------------------------------------------
[[ $(id -u) == 0 ]] || skip "not root (network namespaces need root or CAP_NET_ADMIN + CAP_SYS_ADMIN)"
command -v ip >/dev/null || skip "no 'ip' command (Debian: iproute2)"
command -v tc >/dev/null || skip "no 'tc' command (Debian: iproute2)"

IFS=, read -ra algo_list <<<"$algos"
for a in "${algo_list[@]}"; do
  if ! out=$(MOE_COMM_ALGO= MOE_COMM_ALGO_A2A= "$moe" comm-bench --nproc 1 --op "$op" \
               "$algo_flag" "$a" --min-bytes 4 --max-bytes 4 --iters 1 --warmup 0 2>&1); then
    grep -qE "unknown ((all_reduce|all_to_all) )?algorithm|$algo_flag" <<<"$out" &&
      skip "this moe has no $op algorithm '$a' (or no $algo_flag) yet: $(grep -m1 -E "unknown|$algo_flag" <<<"$out")"
    die "moe comm-bench $algo_flag $a does not run: $out"
  fi
done

pfx="moec$$"            # every name carries our pid: concurrent runs do not collide
sw="${pfx}sw"
ns=()
for ((h = 0; h < hosts; h++)); do ns+=("${pfx}h$h"); done
subnet=10.213.0
work=$(mktemp -d /tmp/emulate_cluster.XXXXXX)
bg_pids=()

cleanup() {
  local rc=$? p
  # A second Ctrl-C (or a signal sent to the whole process group, as timeout does) must not
  # cut the clean-up short and leave namespaces behind: ignore them until it is done.
  trap - EXIT
  trap "" INT TERM
  for p in "${bg_pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  # Anything still running inside our namespaces was started by us.
  for n in "${ns[@]}" "$sw"; do
    [[ -e /var/run/netns/$n ]] || continue
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  for p in "${bg_pids[@]}"; do wait "$p" 2>/dev/null; done
  for n in "${ns[@]}" "$sw"; do
    [[ -e /var/run/netns/$n ]] && ip netns del "$n" 2>/dev/null
  done
  for ((h = 0; h < hosts; h++)); do ip link del "${pfx}a$h" 2>/dev/null; done
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "emulate_cluster: interrupted" >&2; exit 130' INT
trap 'echo "emulate_cluster: terminated" >&2; exit 143' TERM

if ! err=$(ip netns add "$sw" 2>&1); then
  skip "cannot create a network namespace: $err"
fi
if ! err=$(ip netns exec "$sw" ip link set lo up 2>&1); then
  skip "cannot enter a network namespace (ip netns exec): $err"
fi

# --- the switch, the hosts and their links --------------------------------------------------
run() { local e; e=$("$@" 2>&1) || die "'$*' failed: $e"; }
run ip -n "$sw" link add br0 type bridge
run ip -n "$sw" link set br0 up
burst=$(( rate_mbit * 1000000 / 8 / 100 ))            # 10 ms worth of bytes ...
(( burst < 131072 )) && burst=131072                    # ... at least 128 KiB (GSO packets are 64 KiB)
shape() {  # shape NS DEV: tbf at the cap on DEV's egress, optional netem delay
  local e
  if ! e=$(ip netns exec "$1" tc qdisc add dev "$2" root handle 1: tbf rate "${rate_mbit}mbit" \
             burst "$burst" latency 200ms 2>&1); then
    skip "tc tbf cannot be set up on this kernel ($e): no bandwidth cap possible"
  fi
  if [[ -n $delay_ms ]]; then
    if ! e=$(ip netns exec "$1" tc qdisc add dev "$2" parent 1:1 handle 10: netem delay "${delay_ms}ms" 2>&1); then
      skip "netem (--delay-ms) is not available in this kernel: '$e' (sch_netem missing; modprobe: $(command -v modprobe || echo 'not installed')); run without --delay-ms"
    fi
  fi
}
for ((h = 0; h < hosts; h++)); do
  run ip netns add "${ns[h]}"
  run ip link add "${pfx}a$h" type veth peer name "${pfx}b$h"
  run ip link set "${pfx}a$h" netns "${ns[h]}"
  run ip link set "${pfx}b$h" netns "$sw"
  run ip -n "${ns[h]}" link set "${pfx}a$h" name eth0
  run ip -n "$sw" link set "${pfx}b$h" name "vh$h"
  run ip -n "$sw" link set "vh$h" master br0
  run ip -n "$sw" link set "vh$h" up
  run ip -n "${ns[h]}" link set lo up
  run ip -n "${ns[h]}" addr add "$subnet.$((h + 1))/24" dev eth0
  run ip -n "${ns[h]}" link set eth0 up
  shape "${ns[h]}" eth0      # host -> switch
  shape "$sw" "vh$h"         # switch -> host
done
ranks=$((hosts * nproc))
echo "# emulate_cluster: $hosts hosts x $nproc ranks ($ranks), links capped at $rate_mbit Mbit/s each way" \
     "(tbf burst $burst B)${delay_ms:+, +${delay_ms} ms delay}; $op $size, $warmup warmup + $iters iters"
echo "# moe: $moe; MOE_COMM_TRANSPORT=${MOE_COMM_TRANSPORT:-auto}"
awk -v r="$rate_mbit" -v n="$ranks" -v m="$hosts" -v k="$nproc" -v op="$op" 'BEGIN {
  b = r * 1e6 / 8 / 1e9
  if (op == "all_to_all")  # each host sends K*S*(N-K)/N bytes over its link, whatever the algorithm
    printf "# link-limited busbw bound: %.4f GB/s (pairwise and two-level alike)\n", b * (n - 1) / (k * (n - k))
  else
    printf "# link-limited busbw bounds: flat ring %.4f GB/s, two-level %.4f GB/s\n", b, b * ((n - 1) / n) / ((m - 1) / m) }'

# --- one run per algorithm ----------------------------------------------------------------
token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
port=29400
declare -A time_us
printf '%-10s %12s %14s %8s\n' algo "time(us)" "busbw(GB/s)" "wall(s)"
for a in "${algo_list[@]}"; do
  port=$((port + 1))
  bg_pids=()
  t0=$(date +%s.%N)
  for ((h = 0; h < hosts; h++)); do
    ip netns exec "${ns[h]}" env MOE_HOST_ID="host$h" MOE_JOB_TOKEN="$token" MOE_COMM_TIMEOUT=120 \
      MOE_COMM_CONNECT_TIMEOUT=30 MOE_COMM_ALGO= MOE_COMM_ALGO_A2A= \
      "$moe" launch --nnodes "$hosts" --node-rank "$h" --master-addr "$subnet.1" \
      --master-port "$port" --nproc-per-node "$nproc" -- \
      "$moe" comm-bench --op "$op" "$algo_flag" "$a" --min-bytes "$size" --max-bytes "$size" \
      --iters "$iters" --warmup "$warmup" >"$work/$a.$h.log" 2>&1 &
    bg_pids+=($!)
  done
  failed=0
  for ((h = 0; h < hosts; h++)); do wait "${bg_pids[h]}" || failed=1; done
  bg_pids=()
  wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  row=$(sed -e 's/^\[0\] //' "$work/$a.0.log" | awk '$1 ~ /^[0-9]+$/ && NF == 8 {r=$0} END{print r}')
  if ((failed)) || [[ -z $row ]]; then
    for ((h = 0; h < hosts; h++)); do echo "--- host $h ($a):"; tail -8 "$work/$a.$h.log"; done >&2
    die "$op with algo $a failed"
  fi
  # The header names the algorithm it ran with: the flag took effect.
  grep -qE "algo(-a2a)? $a," "$work/$a.0.log" || die "$op: the comm-bench header does not name algo $a"
  read -r bytes _ _ _ us _ _ wrong <<<"$row"
  ((wrong == 0)) || die "$op with algo $a: $wrong wrong elements"
  time_us[$a]=$us
  # comm-bench prints 3 decimals; at capped rates we want more (same nccl-tests formula).
  bw=$(awk -v b="$bytes" -v t="$us" -v n="$ranks" -v op="$op" 'BEGIN {
    f = op == "all_reduce" ? 2 * (n - 1) / n : (n - 1) / n; printf "%.5f", b / (t * 1e-6) / 1e9 * f }')
  printf '%-10s %12s %14s %8s\n' "$a" "$us" "$bw" "$wall"
done

if ((${#algo_list[@]} >= 2)); then
  first=${algo_list[0]} second=${algo_list[1]}
  speedup=$(awk -v x="${time_us[$first]}" -v y="${time_us[$second]}" 'BEGIN{printf "%.2f", (y > 0 ? x / y : 0)}')
  echo "$second / $first busbw: ${speedup}x"
  if [[ -n $min_speedup ]]; then
    awk -v s="$speedup" -v m="$min_speedup" 'BEGIN{exit !(s >= m)}' ||
      die "$second is ${speedup}x $first, below the required ${min_speedup}x"
    echo "emulate_cluster: OK ($second >= ${min_speedup}x $first)"
  fi
fi
