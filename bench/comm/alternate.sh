#!/usr/bin/env bash
# One cell of compare.sh, ours against Open MPI, in alternating runs: for settling a cell that
# compare.sh's few rounds leave in doubt. Prints each round's busbw (GB/s) and ratio, then the
# medians.
#
# usage: bench/comm/alternate.sh [--build DIR] [--rounds 8] [--nproc 2] [--op all_reduce]
#          [--size 4M] [--transport tcp|shm] [--iters 256] [--host-congestion NAME]
# --transport tcp runs ours with MOE_COMM_TRANSPORT=tcp and Open MPI with --mca btl tcp,self;
# shm runs both on their defaults. --host-congestion NAME (root): the host's TCP congestion
# control for the run (Open MPI uses it; ours uses reno between ranks of one host), put back
# at exit.
set -uo pipefail
build=build rounds=8 np=2 op=all_reduce size=4M transport=tcp iters=256 host_cc=
while (($#)); do
  case $1 in
    --build) build=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --nproc) np=$2; shift 2 ;;
    --op) op=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --transport) transport=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --host-congestion) host_cc=$2; shift 2 ;;
    *) echo "alternate.sh: unknown option $1 (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done
[[ $transport == tcp || $transport == shm ]] ||
  { echo "alternate.sh: --transport must be tcp or shm, not '$transport'" >&2; exit 2; }
moe=$build/moe mpib=$build/bench/comm/mpi_bench
for f in "$moe" "$mpib"; do
  [[ -x $f ]] || { echo "alternate.sh: no $f (build the moe and mpi_bench targets in $build)" >&2; exit 2; }
done
if [[ -n $host_cc ]]; then
  cc=/proc/sys/net/ipv4/tcp_congestion_control old=$(cat $cc)
  echo "$host_cc" >$cc || { echo "alternate.sh: cannot set $cc to $host_cc (root?)" >&2; exit 2; }
  trap 'echo "$old" >$cc' EXIT
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ours_env=() mpi_args=()
if [[ $transport == tcp ]]; then ours_env=(MOE_COMM_TRANSPORT=tcp); mpi_args=(--mca pml ob1 --mca btl tcp,self); fi
echo "# alternate.sh: $op, $np ranks, $size, $transport, $iters timed calls, host tcp congestion" \
  "control $(cat /proc/sys/net/ipv4/tcp_congestion_control), moe at $(git -C "$(dirname "$0")" log -1 --format=%h 2>/dev/null)"
echo "# round ours mpi ratio"
all=""
for ((r = 1; r <= rounds; r++)); do
  o=$(env "${ours_env[@]}" "$moe" comm-bench --nproc "$np" --op "$op" --min-bytes "$size" \
        --max-bytes "$size" --iters "$iters" --warmup 10 | awk '$1 ~ /^[0-9]+$/ {print $7}')
  m=$(mpirun --allow-run-as-root --oversubscribe -np "$np" "${mpi_args[@]}" "$mpib" --op "$op" \
        --sizes "$size" --iters "$iters" --warmup 10 2>/dev/null | awk '$1 ~ /^[0-9]+$/ && NF == 8 {print $7}')
  ratio=$(awk -v a="$o" -v b="$m" 'BEGIN{ if (b + 0 > 0) printf "%.2f", a / b; else print "nan" }')
  echo "$r $o $m $ratio"
  all+="$o $m $ratio"$'\n'
done
awk 'function med(s,  a, n, i, j, t) { n = split(s, a, " ")
       for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
       return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
     NF == 3 { o = o " " $1; m = m " " $2; r = r " " $3 }
     END { printf "# medians: ours %.3f GB/s, Open MPI %.3f GB/s, ratio (median of rounds) %.2f\n", med(o), med(m), med(r) }' <<<"$all"
