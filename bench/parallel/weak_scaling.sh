#!/usr/bin/env bash
# Weak scaling of distributed training: the per-rank micro-batch stays fixed while the ranks
# grow, so a perfect system keeps tokens/s per rank at the 1-rank figure (efficiency 1.00).
#
# Each configuration trains bench-moe (configs/bench-moe.toml: 75.8M parameters, 16 experts)
# for --steps steps with OMP_NUM_THREADS=--threads per rank and the GLOBAL micro-batch
# [train] batch = --per-rank-batch x ranks (every rank reads batch / ranks sequences):
#   moe launch --nproc-per-node N -- moe train --config configs/bench-moe.toml
#       --parallel.dp N --train.batch B*N --train.seq_len T --train.steps S --train.eval_tokens 0
#       --log.every 1 --samples 0 --checkpoint.dir TMP
# and reads rank 0's metrics.jsonl ({"kind":"train"} per step). The first --warmup steps are
# skipped; each run gives the median over the remaining steps, each configuration the median
# over --rounds rounds. Every round runs every configuration once, in fresh processes, the order
# rotated from round to round; the efficiency of a configuration is the median over rounds of
# (its tokens/s per rank) / (the 1-rank tokens/s of the same round).
#
# Configurations (--configs, comma separated):
#   r1          one process (plain `moe train`): the baseline; always run
#   rN          N ranks on this host, data parallel (dp N), gradient sync overlapped with backward
#   rN-seq      the same with --parallel.overlap false (reduce-scatter after backward): the A/B
#   epN         N ranks on this host with --parallel.ep N --parallel.dp 1 (experts split)
#   hMxK        M emulated hosts x K ranks (dp M*K): network namespaces joined by a bridge over
#               veth pairs capped with tc tbf at --rate-mbit each way (scripts/emulate_cluster.sh's
#               setup); ranks of one host use shared memory, hosts TCP over the capped links
#   hMxK-seq    the same, overlap off
# hMxK needs root, ip and tc with tbf; otherwise those rows are skipped and the reason printed.
#
# usage: bench/parallel/weak_scaling.sh [--moe PATH] [--rounds 3] [--steps 12] [--warmup 2]
#          [--per-rank-batch 4] [--seq-len 256] [--threads 1] [--rate-mbit 1000]
#          [--configs r1,r2,r2-seq,r4,r4-seq,ep2,h2x1,h2x1-seq,h2x2,h2x2-seq]
#          [--timeout 900] [--raw DIR] [--config configs/bench-moe.toml]
#   --moe PATH   the moe binary (default: build-bench/moe, else build/moe)
#   --raw DIR    keep every run's metrics.jsonl, its log and the per-run summaries in DIR
#   --timeout S  seconds per run before it is stopped (and counted as failed)
# Output: the command line, the machine's state, one line per run, then the table of medians,
# the per-round efficiencies and the overlap A/B. Everything it starts (ranks, namespaces,
# veths, temporary run folders) is removed on exit, failure, Ctrl-C or SIGTERM.
# Times are wall-clock on a shared machine: read the medians and the per-round spread.
set -uo pipefail

rounds=3 steps=12 warmup=2 prb=4 seq_len=256 threads=1 rate_mbit=1000 timeout_s=900
configs=r1,r2,r2-seq,r4,r4-seq,ep2,h2x1,h2x1-seq,h2x2,h2x2-seq
moe= raw= config=configs/bench-moe.toml
cmdline="$0 $*"
while (($#)); do
  case $1 in
    --moe) moe=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --per-rank-batch) prb=$2; shift 2 ;;
    --seq-len) seq_len=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rate-mbit) rate_mbit=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --raw) raw=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    *) echo "weak_scaling: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done
die() { echo "weak_scaling: FAIL: $*" >&2; exit 1; }
((steps > warmup)) || die "--steps ($steps) must exceed --warmup ($warmup)"
((rounds >= 1)) || die "--rounds must be at least 1"

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=emulated_hosts.sh
source "$here/emulated_hosts.sh"
root=$(cd "$here/../.." && pwd)
cd "$root" || die "cannot enter $root"
if [[ -z $moe ]]; then
  for c in build-bench/moe build/moe; do [[ -x $c ]] && { moe=$c; break; }; done
fi
[[ -n $moe && -x $moe ]] || die "no moe binary (cmake --build build-bench --target moe, or --moe PATH)"
moe=$(cd "$(dirname "$moe")" && pwd)/$(basename "$moe")
[[ -f $config ]] || die "no run config $config"
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
py=/usr/bin/python3
[[ -x $py ]] || py=$(command -v python3) || die "no python3 (for the json metrics)"

# --- configurations ---------------------------------------------------------------------
# name -> "hosts per_host dp ep overlap"
declare -A spec
IFS=, read -ra cfg_list <<<"$configs"
[[ " ${cfg_list[*]} " == *" r1 "* ]] || cfg_list=(r1 "${cfg_list[@]}")  # the baseline
max_hosts=0
for c in "${cfg_list[@]}"; do
  ov=true base=$c
  [[ $c == *-seq ]] && { ov=false; base=${c%-seq}; }
  if [[ $base =~ ^r([0-9]+)$ ]]; then
    n=${BASH_REMATCH[1]}; spec[$c]="1 $n $n 1 $ov"
  elif [[ $base =~ ^ep([0-9]+)$ && $ov == true ]]; then
    n=${BASH_REMATCH[1]}; spec[$c]="1 $n 1 $n true"
  elif [[ $base =~ ^h([0-9]+)x([0-9]+)$ ]]; then
    m=${BASH_REMATCH[1]} k=${BASH_REMATCH[2]}
    ((m >= 2 && m <= 4)) || die "config $c: 2 to 4 emulated hosts"
    spec[$c]="$m $k $((m * k)) 1 $ov"
    ((m > max_hosts)) && max_hosts=$m
  else
    die "unknown configuration '$c' (rN, rN-seq, epN, hMxK, hMxK-seq)"
  fi
  read -r _ k d e _ <<<"${spec[$c]}"
  ((k >= 1 && d * e >= 1)) || die "config $c: no ranks"
done

work=$(mktemp -d /tmp/weak_scaling.XXXXXX)
[[ -n $raw ]] || raw=$work/raw
mkdir -p "$raw" || die "cannot make $raw"
raw=$(cd "$raw" && pwd)
summaries=$raw/runs.jsonl
: >"$summaries"
# namespace and link names carry our pid: concurrent runs do not collide
emu_init "wsb$$" 10.214.0 "$max_hosts"
net_ok=0 net_reason="no emulated-host configuration asked for"
bg_pids=()

cleanup() {
  local rc=$? p
  trap - EXIT
  trap "" INT TERM
  for p in "${bg_pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  emu_teardown   # anything still running inside our namespaces, then the namespaces
  for p in "${bg_pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$work"   # the run folders (and the raw figures unless --raw put them elsewhere)
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "weak_scaling: interrupted" >&2; exit 130' INT
trap 'echo "weak_scaling: terminated" >&2; exit 143' TERM

# --- emulated hosts: namespaces, a bridge, tbf-capped veths (emulated_hosts.sh) -----------
setup_net() {  # sets net_ok=1, or net_reason
  if emu_setup "$rate_mbit"; then net_ok=1 net_burst=$emu_burst; else net_reason=$emu_reason; fi
}

# --- header --------------------------------------------------------------------------------
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no -- src include CMakeLists.txt 2>/dev/null | wc -l)
echo "# command: $cmdline"
echo "# date: $(date '+%Y-%m-%d %H:%M:%S %Z'); commit $commit$( ((dirty)) && echo " (+ $dirty uncommitted files under src/ include/ CMakeLists.txt in the tree)")"
echo "# host: $(nproc) cores ($(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# moe: $moe; model config: ${config#"$root"/}"
echo "# per rank: batch $prb x seq $seq_len = $((prb * seq_len)) tokens per step, OMP_NUM_THREADS=$threads; $steps steps, first $warmup skipped; $rounds rounds"
env | grep -E '^(MOE_|OMP_)' | sed 's/^MOE_JOB_TOKEN=.*/MOE_JOB_TOKEN=(set)/; s/^/# env: /'
if ((max_hosts)); then
  setup_net
  if ((net_ok)); then
    echo "# emulated hosts: $max_hosts network namespaces on a bridge, veth links capped with tbf at $rate_mbit Mbit/s each way (burst $net_burst B); no added latency (no netem here)"
  else
    echo "# emulated hosts: SKIPPED: $net_reason"
  fi
fi
ncores=$(nproc)
for c in "${cfg_list[@]}"; do
  read -r m k d e _ <<<"${spec[$c]}"
  ((m * k * threads > ncores)) &&
    echo "# note: $c runs $((m * k)) ranks x $threads thread(s) on $ncores cores: oversubscribed"
done

# --- one run -------------------------------------------------------------------------------
port=29600
run_one() {  # run_one ROUND CONFIG
  local r=$1 c=$2 m k d e ov ranks batch out tag t0 wall rc=0 h load
  read -r m k d e ov <<<"${spec[$c]}"
  ranks=$((m * k)) batch=$((prb * m * k)) tag=r${r}_$c
  out=$work/run/$tag
  rm -rf "$work/run"; mkdir -p "$out"
  load=$(cut -d' ' -f1 /proc/loadavg)
  local train=("$moe" train --config "$config" --train.batch "$batch" --train.seq_len "$seq_len"
               --train.steps "$steps" --train.eval_tokens 0 --log.every 1 --log.progress plain
               --samples 0 --checkpoint.dir "$out")
  ((ranks > 1)) && train+=(--parallel.dp "$d" --parallel.ep "$e" --parallel.overlap "$ov")
  if ((m > 1)) && ! ((net_ok)); then
    echo "{\"round\": $r, \"config\": \"$c\", \"skipped\": $(printf '%s' "$net_reason" | "$py" -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}" >>"$summaries"
    printf 'round %d  %-10s skipped: %s\n' "$r" "$c" "$net_reason"
    return
  fi
  t0=$(date +%s.%N)
  bg_pids=()
  if ((ranks == 1)); then
    OMP_NUM_THREADS=$threads timeout -k 10 "$timeout_s" "${train[@]}" >"$raw/$tag.log" 2>&1 &
    bg_pids+=($!)
  elif ((m == 1)); then
    OMP_NUM_THREADS=$threads timeout -k 10 "$timeout_s" "$moe" launch --nproc-per-node "$k" -- \
      "${train[@]}" >"$raw/$tag.log" 2>&1 &
    bg_pids+=($!)
  else
    port=$((port + 1))
    local token
    token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    for ((h = 0; h < m; h++)); do
      timeout -k 10 "$timeout_s" ip netns exec "${emu_ns[h]}" env OMP_NUM_THREADS="$threads" \
        MOE_HOST_ID="host$h" MOE_JOB_TOKEN="$token" MOE_COMM_TIMEOUT=300 MOE_COMM_CONNECT_TIMEOUT=60 \
        "$moe" launch --nnodes "$m" --node-rank "$h" --master-addr "$(emu_ip 0)" --master-port "$port" \
        --nproc-per-node "$k" -- "${train[@]}" >"$raw/$tag.host$h.log" 2>&1 &
      bg_pids+=($!)
    done
  fi
  local p
  for p in "${bg_pids[@]}"; do wait "$p" || rc=$?; done
  bg_pids=()
  wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  [[ -f $out/metrics.jsonl ]] && cp "$out/metrics.jsonl" "$raw/$tag.metrics.jsonl"
  rm -rf "$work/run"
  "$py" - "$raw/$tag.metrics.jsonl" "$r" "$c" "$ranks" "$m" "$d" "$e" "$ov" "$rc" "$wall" "$load" \
    "$warmup" "$summaries" <<'PY'
import json, os, statistics as st, sys
path, rnd, cfg, ranks, hosts, dp, ep, ov, rc, wall, load, warm, out = sys.argv[1:]
ranks, hosts, warm = int(ranks), int(hosts), int(warm)
res = {"round": int(rnd), "config": cfg, "ranks": ranks, "hosts": hosts, "dp": int(dp),
       "ep": int(ep), "overlap": ov == "true", "rc": int(rc), "wall_s": float(wall),
       "load_at_start": float(load)}
recs, run = [], None
if os.path.exists(path):
    for line in open(path):
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("kind") == "run": run = j
        if j.get("kind") == "train" and j.get("step", 0) > warm: recs.append(j)
if run:
    t = run["train"]
    res["tokens_per_step"] = t["batch"] * t["seq_len"] * t.get("accum", 1)
    res["ranks_reported"] = run.get("ranks")
if int(rc) != 0 or not recs or not run:
    res["failed"] = f"exit {rc}, {len(recs)} train records after warm-up"
else:
    tps = res["tokens_per_step"]
    def med(key): return st.median(float(x[key]) for x in recs)
    for k in ("tokens_per_s", "step_s", "comm_exposed_s", "grad_wait_s",
              "param_gather_s", "dispatch_s"):
        res[k] = med(k)
    # wall time per step from the job's throughput (step_s is the slowest rank's step)
    walls = [tps / float(x["tokens_per_s"]) for x in recs]
    res["wall_step_s"] = st.median(walls)
    res["exposed_share"] = st.median(float(x["comm_exposed_s"]) / w for x, w in zip(recs, walls))
    res["steps_used"] = len(recs)
    res["per_step_tokens_per_s"] = [round(float(x["tokens_per_s"]), 2) for x in recs]
with open(out, "a") as f: f.write(json.dumps(res) + "\n")
if "failed" in res:
    print(f"round {rnd}  {cfg:<10} FAILED ({res['failed']}); log kept in the raw folder")
else:
    print(f"round {rnd}  {cfg:<10} {ranks} ranks  {res['tokens_per_s']:8.1f} tok/s  "
          f"wall/step {res['wall_step_s']:.3f} s  step_s {res['step_s']:.3f}  "
          f"exposed {100*res['exposed_share']:5.1f}%  grad_wait {res['grad_wait_s']:.4f} s"
          f"  (run {float(wall):.0f} s, load {float(load):.2f})")
PY
}

# --- rounds: every configuration once per round, the order rotated -------------------------
n=${#cfg_list[@]}
for ((r = 1; r <= rounds; r++)); do
  for ((i = 0; i < n; i++)); do
    run_one "$r" "${cfg_list[$(((i + r - 1) % n))]}"
  done
done

# --- summary -------------------------------------------------------------------------------
"$py" - "$summaries" "${cfg_list[@]}" <<'PY'
import json, statistics as st, sys
path, order = sys.argv[1], sys.argv[2:]
runs = [json.loads(l) for l in open(path)]
ok = [x for x in runs if "failed" not in x and "skipped" not in x]
base = {x["round"]: x["tokens_per_s"] for x in ok if x["config"] == "r1"}
def med(v):
    v = [x for x in v if x is not None]
    return st.median(v) if v else None
def f(v, fmt):
    return "-" if v is None else format(v, fmt)
print()
print("## Medians over rounds (per run: median over the steps after warm-up; waits: the largest over ranks)")
hdr = ("config", "ranks", "tok/s job", "tok/s/rank", "eff", "wall/step", "step_s", "exposed",
       "grad_wait", "param_gather", "dispatch", "runs")
print("%-9s %5s %10s %10s %5s %9s %7s %7s %9s %12s %8s %5s" % hdr)
effs = {}
for c in order:
    rs = [x for x in ok if x["config"] == c]
    bad = [x for x in runs if x["config"] == c and ("failed" in x or "skipped" in x)]
    if not rs:
        why = bad[0].get("skipped") or bad[0].get("failed") if bad else "no run"
        print(f"{c:<9} skipped: {why}")
        continue
    ranks = rs[0]["ranks"]
    e = [x["tokens_per_s"] / ranks / base[x["round"]] for x in rs if x["round"] in base]
    effs[c] = e
    m = lambda k: med([x.get(k) for x in rs])
    tps = m("tokens_per_s")
    print("%-9s %5d %10.1f %10.1f %5s %9.3f %7.3f %6s%% %9.4f %12.4f %8.4f %2d/%d" % (
        c, ranks, tps, tps / ranks, f(med(e), ".2f"), m("wall_step_s"), m("step_s"),
        f(None if m("exposed_share") is None else 100 * m("exposed_share"), "5.1f"),
        m("grad_wait_s"), m("param_gather_s"), m("dispatch_s"),
        len(rs), len(rs) + len(bad)))
print()
print("## Per round: efficiency (tok/s per rank / the same round's 1-rank tok/s), tok/s job")
for c in order:
    rs = sorted((x for x in ok if x["config"] == c), key=lambda x: x["round"])
    if not rs: continue
    print(f"{c:<9} " + "  ".join(
        f"r{x['round']}: {x['tokens_per_s'] / x['ranks'] / base[x['round']]:.2f} ({x['tokens_per_s']:.1f})"
        if x["round"] in base else f"r{x['round']}: - ({x['tokens_per_s']:.1f})" for x in rs))
pairs = [(c, c + "-seq") for c in order if c + "-seq" in order]
hid_ab = {}
if pairs:
    print()
    print("## Overlap A/B: wall time per step, overlap off / on (median of same-round ratios; > 1: overlap helps)")
    for on, off in pairs:
        rat, won, woff, gw_on, gw_off = [], [], [], [], []
        for r in sorted({x["round"] for x in ok}):
            a = [x for x in ok if x["config"] == on and x["round"] == r]
            b = [x for x in ok if x["config"] == off and x["round"] == r]
            if a and b:
                rat.append(b[0]["wall_step_s"] / a[0]["wall_step_s"])
                won.append(a[0]["wall_step_s"]); woff.append(b[0]["wall_step_s"])
                gw_on.append(a[0]["grad_wait_s"]); gw_off.append(b[0]["grad_wait_s"])
        if rat:
            hid_ab[on] = 1 - st.median(gw_on) / st.median(gw_off) if st.median(gw_off) > 0 else None
            print(f"{on:<9} wall/step on {st.median(won):.3f} s, off {st.median(woff):.3f} s: "
                  f"off/on {st.median(rat):.2f} (per round {' '.join(f'{v:.2f}' for v in rat)}); "
                  f"grad_wait on {st.median(gw_on):.4f} s, off {st.median(gw_off):.4f} s: "
                  f"hidden (A/B) {f(None if hid_ab[on] is None else 100 * hid_ab[on], '.1f')}%")
print()
print("## Targets (issue)")
if "r2" in effs:
    v = med(effs["r2"])
    print(f"2 ranks on one host, efficiency >= 0.85: {v:.2f} -> {'held' if v >= 0.85 else 'NOT met'}")
for c, a in hid_ab.items():
    if a is not None:
        print(f"{c}: overlap hides >= 50% of gradient-sync time: {100*a:.1f}% by the A/B "
              f"(1 - grad_wait_s overlap on / off) -> {'held' if a >= 0.5 else 'NOT met'}")
PY
echo "# raw figures: $summaries$( [[ $raw == "$work/raw" ]] && echo " (removed at exit: pass --raw DIR to keep them)")"
