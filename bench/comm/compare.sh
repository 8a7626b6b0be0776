#!/usr/bin/env bash
# moe::comm against Open MPI 4.1 and Gloo on this host, in one run (GitHub issue 3, item 4).
#
# For every round, op (all_reduce, all_to_all), rank count and size it runs each system once,
# each in a fresh set of processes, the order of the systems rotated from round to round so
# that no system always runs first or last; then it prints, per cell, the median busbw over
# the rounds (with min and max), and the ratios ours/other as the median of the per-round
# ratios (both measured in the same round, minutes apart at most). Also the memcpy,
# single-copy (process_vm_readv) and loopback-TCP ceilings (comm_limits), once per round, and
# all_to_all at 64M against the host's copy ceiling (memcpy-all * (n-1)/n^2, comm_limits).
#
# Systems (f32, all_reduce sums; every program prints nccl-tests' columns, busbw =
# algbw * 2(n-1)/n for all_reduce and (n-1)/n for all_to_all, time = mean per call of the
# slowest rank; see bench_common.h):
#   ours         moe comm-bench with the default transport (MOE_COMM_TRANSPORT unset: auto)
#   ours-reg     the same as ours with --registered: in and out buffers from Communicator::alloc,
#                which ranks of one host map (like nccl-tests -R 1, registered user buffers)
#   ours-tcp     moe comm-bench with MOE_COMM_TRANSPORT=tcp
#   mpi-shm      mpi_bench under mpirun with Open MPI's defaults (one host: pml ob1, btl vader)
#   mpi-tcp      mpi_bench under mpirun --mca pml ob1 --mca btl tcp,self
#   gloo-ring    gloo_bench: gloo::AllreduceRing over Gloo's TCP transport (all_reduce)
#   gloo-chunked gloo_bench: gloo::AllreduceRingChunked (all_reduce)
#   gloo         gloo_bench: gloo::alltoall (all_to_all)
#
# usage: bench/comm/compare.sh [--build DIR] [--moe PATH] [--rounds 5] [--sizes 4M,64M]
#          [--nprocs 2,4] [--ops all_reduce,all_to_all] [--iters auto] [--warmup 10]
#          [--timeout 240] [--raw FILE] [--host-congestion NAME]
# DIR is a CMake build of moe.cpp with the benchmarks (default: build); PATH the moe binary
# (default DIR/moe). Missing mpi_bench / gloo_bench / mpirun: those systems are skipped with a
# message (scripts/setup.sh bench installs openmpi-bin libopenmpi-dev libgloo-dev).
# --iters auto (the default) times each run over 1 GiB / size calls, at least 20 and at most
# 2000: 256 at 4M, 20 at 64M, 2000 below 512K, so a small-size run lasts long enough (0.1-0.5
# s) for the noise of one core switching away to average out; 20 calls at 4M lasted 10-20 ms
# and swung 2-4x per round.
# --host-congestion NAME (root) sets the host's TCP congestion control for the run and puts
# the old one back at the end, so Open MPI and Gloo run on NAME too: e.g. reno, the one ours
# uses between ranks of one host, for a comparison on equal terms.
set -uo pipefail

build=build moe= rounds=5 sizes=4M,64M nprocs=2,4 ops=all_reduce,all_to_all iters=auto warmup=10
timeout_s=240 raw= host_cc=
while (($#)); do
  case $1 in
    --build) build=$2; shift 2 ;;
    --moe) moe=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --nprocs) nprocs=$2; shift 2 ;;
    --ops) ops=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --raw) raw=$2; shift 2 ;;
    --host-congestion) host_cc=$2; shift 2 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done
moe=${moe:-$build/moe}
limits=$build/bench/comm/comm_limits
mpib=$build/bench/comm/mpi_bench
gloob=$build/bench/comm/gloo_bench
[[ -x $moe ]] || { echo "compare.sh: no moe binary at $moe (cmake --build $build --target moe)" >&2; exit 2; }

have_mpi=1 have_gloo=1 have_limits=1
if [[ ! -x $mpib ]] || ! command -v mpirun >/dev/null; then
  have_mpi=0
  echo "compare.sh: Open MPI skipped: no $mpib or no mpirun (scripts/setup.sh bench, then rebuild)"
fi
if [[ ! -x $gloob ]]; then
  have_gloo=0
  echo "compare.sh: Gloo skipped: no $gloob (scripts/setup.sh bench installs libgloo-dev, then rebuild)"
fi
[[ -x $limits ]] || { have_limits=0; echo "compare.sh: no $limits: ceilings skipped"; }

cc_file=/proc/sys/net/ipv4/tcp_congestion_control
old_cc=
if [[ -n $host_cc ]]; then
  old_cc=$(cat "$cc_file")
  echo "$host_cc" 2>/dev/null >"$cc_file" || {
    echo "compare.sh: --host-congestion $host_cc: cannot write $cc_file (needs root, and a name this host has:" \
      "$(cat /proc/sys/net/ipv4/tcp_available_congestion_control))" >&2
    exit 2
  }
fi
work=$(mktemp -d /tmp/moe-compare.XXXXXX)
cleanup() {
  rm -rf "$work"
  [[ -z $old_cc ]] || echo "$old_cc" >"$cc_file"
}
trap cleanup EXIT
trap 'echo "compare.sh: interrupted" >&2; exit 130' INT TERM
raw=${raw:-$work/raw.tsv}
: >"$raw"
# mpirun as root, and more ranks than cores (2 cores here).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun_args=(--allow-run-as-root --oversubscribe)

IFS=, read -ra op_list <<<"$ops"
IFS=, read -ra np_list <<<"$nprocs"
IFS=, read -ra size_list <<<"$sizes"

systems_for() {  # op -> the systems measured for it, in their base order
  local s=(ours ours-reg ours-tcp)
  ((have_mpi)) && s+=(mpi-shm mpi-tcp)
  if ((have_gloo)); then
    if [[ $1 == all_reduce ]]; then s+=(gloo-ring gloo-chunked); else s+=(gloo); fi
  fi
  echo "${s[@]}"
}

# iters_for SIZE (1K, 4M, 64M, 1G or bytes) -> the timed calls per run
iters_for() {
  if [[ $iters != auto ]]; then echo "$iters"; return; fi
  local n=${1%[KMG]} bytes
  case $1 in
    *K) bytes=$((n << 10)) ;; *M) bytes=$((n << 20)) ;; *G) bytes=$((n << 30)) ;; *) bytes=$n ;;
  esac
  local k=$(((1 << 30) / (bytes > 0 ? bytes : 1)))
  ((k < 20)) && k=20
  ((k > 2000)) && k=2000
  echo "$k"
}

# run SYSTEM OP NP SIZE -> prints "busbw time_us wall_s status"
run_one() {
  local sys=$1 op=$2 np=$3 size=$4 out=$work/out.txt cmd=() store=
  local calls
  calls=$(iters_for "$size")
  case $sys in
    ours) cmd=(env -u MOE_COMM_TRANSPORT "$moe" comm-bench) ;;
    ours-reg) cmd=(env -u MOE_COMM_TRANSPORT "$moe" comm-bench --registered) ;;
    ours-tcp) cmd=(env MOE_COMM_TRANSPORT=tcp "$moe" comm-bench) ;;
  esac
  if [[ $sys == ours* ]]; then
    cmd+=(--nproc "$np" --op "$op" --min-bytes "$size" --max-bytes "$size" --iters "$calls"
          --warmup "$warmup")
  elif [[ $sys == mpi-* ]]; then
    cmd=(mpirun "${mpirun_args[@]}" -np "$np")
    [[ $sys == mpi-tcp ]] && cmd+=(--mca pml ob1 --mca btl tcp,self)
    cmd+=("$mpib" --op "$op" --sizes "$size" --iters "$calls" --warmup "$warmup")
  else
    store=$(mktemp -d "$work/store.XXXXXX")
    local algo=()
    [[ $sys == gloo-ring ]] && algo=(--algo ring)
    [[ $sys == gloo-chunked ]] && algo=(--algo ring_chunked)
    cmd=("$moe" launch --nproc-per-node "$np" -- "$gloob" --op "$op" "${algo[@]}" --store "$store"
         --sizes "$size" --iters "$calls" --warmup "$warmup")
  fi
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout -k 5 "$timeout_s" "${cmd[@]}" >"$out" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  [[ -n $store ]] && rm -rf "$store"
  local wall row
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
  # The data row: "[0] " prefix under moe launch; columns size count type redop time algbw busbw #wrong.
  row=$(sed -e 's/^\[0\] //' "$out" | awk '$1 ~ /^[0-9]+$/ && NF == 8 {r=$0} END{print r}')
  if ((rc == 124 || rc == 137)); then echo "0 0 $wall timeout"; return; fi
  if [[ -z $row || $rc -ne 0 ]]; then
    echo "compare.sh: $sys $op np=$np $size failed (exit $rc):" >&2
    tail -5 "$out" >&2
    echo "0 0 $wall failed"
    return
  fi
  awk -v w="$wall" '{print $7, $5, w, ($8 == 0 ? "ok" : "wrong")}' <<<"$row"
}

echo "# compare.sh: $(date -u +%FT%TZ) on $(hostname), $(nproc) cores, $(uname -r)"
echo "# ours: $moe (source tree of this script at $(git -C "$(dirname "$0")" log -1 --format=%h 2>/dev/null || echo '?'))," \
     "MOE_COMM_TRANSPORT=${MOE_COMM_TRANSPORT:-unset} for 'ours'"
((have_mpi)) && echo "# $(mpirun --version 2>/dev/null | head -1)"
((have_gloo)) && echo "# Gloo: $(dpkg-query -W -f='${Version}' libgloo-dev 2>/dev/null || echo '?')"
echo "# tcp congestion control: host default $(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo '?')" \
  "(Open MPI, Gloo); ours: ${MOE_COMM_TCP_CONGESTION:-reno between ranks of one host} (MOE_COMM_TCP_CONGESTION)"
timed=$(for s in "${size_list[@]}"; do printf '%s: %s, ' "$s" "$(iters_for "$s")"; done)
echo "# rounds $rounds, sizes $sizes, ranks $nprocs, $warmup warmup + timed iters per run (${timed%, })"
echo "# raw: round op ranks bytes system busbw(GB/s) time(us) wall(s) status"

for ((r = 1; r <= rounds; r++)); do
  if ((have_limits)); then
    lim=$("$limits" 64M 0.5 2>/dev/null)
    mc=$(awk '/^memcpy /{print $2}' <<<"$lim")
    lb=$(awk '/^loopback/{print $3}' <<<"$lim")
    cm=$(awk '/^cma/{print $2}' <<<"$lim")
    ma=$(awk '/^memcpy-all/{print $2}' <<<"$lim")
    sa=$(awk '/^stream-all/{print $2}' <<<"$lim")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" limits 1 64M memcpy "$mc" 0 0 ok >>"$raw"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" limits 1 64M memcpy-all "$ma" 0 0 ok >>"$raw"
    [[ $sa =~ ^[0-9.]+$ ]] &&
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" limits 1 64M stream-all "$sa" 0 0 ok >>"$raw"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" limits 1 64M loopback-tcp "$lb" 0 0 ok >>"$raw"
    [[ $cm =~ ^[0-9.]+$ ]] &&
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" limits 1 64M cma "$cm" 0 0 ok >>"$raw"
  fi
  for op in "${op_list[@]}"; do
    read -ra base <<<"$(systems_for "$op")"
    k=${#base[@]}
    for np in "${np_list[@]}"; do
      for size in "${size_list[@]}"; do
        for ((i = 0; i < k; i++)); do
          sys=${base[$(((i + r - 1) % k))]}  # rotate the order each round
          read -r bw us wall st < <(run_one "$sys" "$op" "$np" "$size")
          printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$op" "$np" "$size" "$sys" "$bw" "$us" \
            "$wall" "$st" | tee -a "$raw" | sed 's/^/# raw /'
        done
      done
    done
  done
done

# Medians over rounds per cell, then ratios as the median of per-round ratios.
echo
echo "## Medians over $rounds rounds: busbw GB/s (min-max), wall seconds per run (median)"
awk -F'\t' '
  function median(s,   a, n, i, j, t) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    if (n == 0) return 0
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  function mn(s,  a, n, i, m) { n = split(s, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 < m + 0) m = a[i]; return m }
  function mx(s,  a, n, i, m) { n = split(s, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 > m + 0) m = a[i]; return m }
  {
    cell = $2 SUBSEP $3 SUBSEP $4; key = cell SUBSEP $5
    if (!(cell in seen_cell)) { seen_cell[cell] = 1; cells[++nc] = cell }
    if (!(key in seen_key)) { seen_key[key] = 1; order[cell] = order[cell] " " $5 }
    if ($9 == "ok") { bw[key] = bw[key] " " $6; wall[key] = wall[key] " " $8; v[$1, key] = $6 }
    else bad[key] = bad[key] " " $9
    if ($1 + 0 > maxr) maxr = $1 + 0
  }
  END {
    printf "%-11s %5s %5s  %-13s %8s %17s %7s  %s\n", "op", "ranks", "size", "system", "busbw", "(min-max)", "wall", "failures"
    for (c = 1; c <= nc; c++) {
      split(cells[c], p, SUBSEP); ns = split(order[cells[c]], sy, " ")
      for (s = 1; s <= ns; s++) {
        key = cells[c] SUBSEP sy[s]
        printf "%-11s %5s %5s  %-13s %8.3f  (%6.3f - %6.3f) %7.1f  %s\n", p[1], p[2], p[3], sy[s], median(bw[key]), mn(bw[key]), mx(bw[key]), median(wall[key]), bad[key]
      }
    }
    print ""
    print "## Ratios: median over rounds of (ours busbw / other busbw) measured in the same round"
    printf "%-11s %5s %5s  %-24s %7s  %s\n", "op", "ranks", "size", "ratio", "median", "per round"
    npairs = split("ours/mpi-shm ours-reg/mpi-shm ours-tcp/mpi-tcp ours/mpi-tcp ours/gloo-chunked ours/gloo-ring ours/gloo ours-reg/gloo-chunked ours-reg/gloo ours-tcp/gloo-chunked ours-tcp/gloo", pairs, " ")
    for (c = 1; c <= nc; c++) {
      split(cells[c], p, SUBSEP)
      if (p[1] == "limits") continue
      for (q = 1; q <= npairs; q++) {
        split(pairs[q], ab, "/"); list = ""
        for (r = 1; r <= maxr; r++) {
          x = v[r, cells[c] SUBSEP ab[1]]; y = v[r, cells[c] SUBSEP ab[2]]
          if (x != "" && y != "" && y + 0 > 0) list = list " " sprintf("%.2f", x / y)
        }
        if (list != "") printf "%-11s %5s %5s  %-24s %7.2f  %s\n", p[1], p[2], p[3], pairs[q], median(list), list
      }
    }
    # On one host every rank of an all_to_all copies its whole buffer (own block + received
    # ones), n*size bytes in all, through memory that moves memcpy-all GB/s with every core
    # copying (stream-all with non-temporal stores, as copy_block does; the larger counts):
    # busbw <= max(memcpy-all, stream-all) * (n-1)/n^2 (comm_limits, measured with 64 MiB
    # buffers, so only the 64M cells are held to it).
    hdr = 0
    for (c = 1; c <= nc; c++) {
      split(cells[c], p, SUBSEP)
      if (p[1] != "all_to_all" || p[3] != "64M") continue  # smaller buffers sit in the caches
      n = p[2] + 0
      ns = split("ours ours-reg mpi-shm", sy, " ")
      for (s = 1; s <= ns; s++) {
        list = ""
        for (r = 1; r <= maxr; r++) {
          x = v[r, cells[c] SUBSEP sy[s]]; a = v[r, "limits" SUBSEP 1 SUBSEP "64M" SUBSEP "memcpy-all"]
          b = v[r, "limits" SUBSEP 1 SUBSEP "64M" SUBSEP "stream-all"]; if (b + 0 > a + 0) a = b
          if (x != "" && a != "" && a + 0 > 0) list = list " " sprintf("%.2f", x / (a * (n - 1) / (n * n)))
        }
        if (list == "") continue
        if (!hdr++) {
          print ""
          print "## all_to_all busbw / the host ceiling max(memcpy-all, stream-all)*(n-1)/n^2, median of same-round ratios"
          printf "%-11s %5s %5s  %-24s %7s  %s\n", "op", "ranks", "size", "system", "median", "per round"
        }
        printf "%-11s %5s %5s  %-24s %7.2f  %s\n", p[1], p[2], p[3], sy[s] "/ceiling", median(list), list
      }
    }
  }' "$raw"
