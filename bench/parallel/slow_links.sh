#!/usr/bin/env bash
# Training speed on slow links (issue 16, item 3): 2 emulated hosts x 2 ranks behind links
# capped at each --rates value (Mbit/s, each way), tokens/s and bytes per step of
#   plain        --parallel.ep 4 --parallel.dp 1: the 8 routed experts spread over both hosts
#                (2 per rank); replicated gradients reduce-scattered over the 4 ranks; fp32
#   bf16         the same, gradients, dispatch and combine in bf16 on the wire
#   compressed   the same, --parallel.grad_comm_dtype int8 --parallel.dispatch_dtype fp8
#                --parallel.combine_dtype bf16
#   nodelimited  compressed + --model.n_group 2 --model.topk_group 1 (DeepSeek-V3 group-limited
#                routing: each token's experts from one group of 4, i.e. one host) and
#                MOE_COMM_ALGO_A2A=two_level (one inter-host message per host pair)
#   diloco       --parallel.mode diloco --parallel.inner_steps H --parallel.ep 2: each host's 2
#                ranks are a group (ep 2) that trains alone, the groups average pseudo-gradients
#                every H steps
# on the model of --config (default configs/small.toml: 3.78M parameters, D=192) and its data
# source (tinyshakespeare if the file is there, else the built-in corpus; --data to choose):
#   ip netns exec HOST env MOE_HOST_ID=hostH MOE_JOB_TOKEN=... moe launch --nnodes 2 --node-rank H
#     --master-addr 10.215.0.1 --nproc-per-node 2 -- moe train --config C --data.source D
#     --train.steps S --train.eval_tokens 0 --train.sample_every 0 --checkpoint.every 0
#     --log.every 1 --log.progress plain --samples 0 --checkpoint.dir TMP <mode's keys>
# (the global micro-batch is the config's [train] batch: every mode trains the same tokens per
# step). Sync modes run --steps steps and skip the first --warmup; diloco runs whole periods:
# H x (ceil(warmup / H) + --periods) steps, measured over the last --periods x H (the outer sync
# is part of its period's last step). tok/s of a run = tokens of the measured steps / the sum of
# their wall times (each step's record: tokens per step / tokens_per_s, so a slow sync step
# weighs what it cost); per mode and rate, the median over --rounds rounds; "speedup" is the
# median over rounds of (tok/s / plain's tok/s at the same rate in the same round).
#
# Bytes, two independent counts: the switch ports' counters (frames each host sent over its link;
# TCP/IP headers and ACKs included) read the moment rank 0 writes each step's record
# (emulated_hosts.sh's emu_sampler), differenced over the measured steps ("links": both hosts'
# bytes per step; "to other hosts /rank": / 4 ranks), and the trainer's own counters in its
# train records (every field whose name has "bytes": net_bytes to other hosts, sent_bytes in
# all, net_bytes_<collective>; payload, summed over the ranks), averaged over the same steps.
#
# usage: bench/parallel/slow_links.sh [--moe PATH] [--rounds 3] [--steps 12] [--warmup 2]
#          [--inner-steps 50] [--diloco-ep 2] [--periods 1] [--threads 1] [--rates 1000,100]
#          [--modes plain,compressed,nodelimited,diloco] [--timeout 900] [--raw DIR]
#          [--config configs/small.toml] [--data PATH|builtin] [--batch B] [--seq-len T]
#   --moe PATH   the moe binary (default: build-bench/moe, else build/moe)
#   --raw DIR    keep every run's metrics.jsonl, run.toml, logs, link samples and the per-run
#                summaries (runs.jsonl) in DIR
#   --timeout S  seconds per run before it is stopped (and counted as failed)
#   --diloco-ep N  expert parallelism inside each DiLoCo group of 2 ranks (2: the experts split,
#                all-to-alls over shared memory; 1: dp 2, no all-to-all)
# A mode this binary does not have (an unknown key, no outer syncs in a diloco run, no group
# limit in the run record) fails with the reason and the others go on. Needs root, ip and tc
# with tbf (otherwise it says why and exits 77). Everything it starts (ranks, launchers, the
# sampler, namespaces, veths, temporary run folders) is removed on exit, failure, Ctrl-C or
# SIGTERM. Times are wall-clock on a shared machine: 4 ranks on 2 cores are oversubscribed.
set -uo pipefail

rounds=3 steps=12 warmup=2 inner=50 diloco_ep=2 periods=1 threads=1 timeout_s=900
rates=1000,100 modes=plain,compressed,nodelimited,diloco
moe= raw= config=configs/small.toml data= batch= seq_len=
cmdline="$0 $*"
while (($#)); do
  case $1 in
    --moe) moe=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --inner-steps) inner=$2; shift 2 ;;
    --diloco-ep) diloco_ep=$2; shift 2 ;;
    --periods) periods=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --raw) raw=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --seq-len) seq_len=$2; shift 2 ;;
    -h|--help) sed -n '2,48p' "$0"; exit 0 ;;
    *) echo "slow_links: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done
die() { echo "slow_links: FAIL: $*" >&2; exit 1; }
isint() { [[ $1 =~ ^[0-9]+$ ]]; }
for v in rounds:rounds steps:steps warmup:warmup inner-steps:inner periods:periods \
         threads:threads timeout:timeout_s; do
  var=${v#*:}
  isint "${!var}" || die "--${v%%:*} must be a whole number, got '${!var}'"
done
((rounds >= 1)) || die "--rounds must be at least 1"
((steps > warmup)) || die "--steps ($steps) must exceed --warmup ($warmup)"
((warmup >= 1)) || die "--warmup must be at least 1 (the link counters of step 0 include the start-up)"
((inner >= 1 && periods >= 1)) || die "--inner-steps and --periods must be at least 1"
((threads >= 1)) || die "--threads must be at least 1"
IFS=, read -ra rate_list <<<"$rates"
for r in "${rate_list[@]}"; do isint "$r" && ((r > 0)) || die "--rates: '$r' is not a rate in Mbit/s"; done
IFS=, read -ra mode_list <<<"$modes"
declare -A known=([plain]=1 [bf16]=1 [compressed]=1 [nodelimited]=1 [diloco]=1)
for m in "${mode_list[@]}"; do
  [[ -n ${known[$m]:-} ]] || die "unknown mode '$m' (plain, bf16, compressed, nodelimited, diloco)"
done
# plain first: the speedups are against it
[[ " ${mode_list[*]} " == *" plain "* ]] || mode_list=(plain "${mode_list[@]}")
hosts=2 per_host=2 ranks=4
diloco_steps=$((inner * ((warmup + inner - 1) / inner + periods)))

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
if [[ -z $data ]]; then
  data=builtin
  for c in "$root/../shared/data/tinyshakespeare.txt" "$root/data/tinyshakespeare.txt"; do
    [[ -f $c ]] && { data=$(cd "$(dirname "$c")" && pwd)/$(basename "$c"); break; }
  done
elif [[ $data != builtin ]]; then
  [[ -e $data ]] || die "no data at $data"
  data=$(cd "$(dirname "$data")" && pwd)/$(basename "$data")
fi
py=/usr/bin/python3
[[ -x $py ]] || py=$(command -v python3) || die "no python3 (for the json metrics)"

work=$(mktemp -d /tmp/slow_links.XXXXXX)
[[ -n $raw ]] || raw=$work/raw
mkdir -p "$raw" || die "cannot make $raw"
raw=$(cd "$raw" && pwd)
summaries=$raw/runs.jsonl
: >"$summaries"
emu_init "slb$$" 10.215.0 "$hosts"   # names carry our pid: concurrent runs do not collide
bg_pids=() sampler_pid=

cleanup() {
  local rc=$? p
  trap - EXIT
  trap "" INT TERM
  for p in "${bg_pids[@]}" $sampler_pid; do kill -TERM "$p" 2>/dev/null; done
  emu_teardown   # anything still running inside our namespaces, then the namespaces
  for p in "${bg_pids[@]}" $sampler_pid; do wait "$p" 2>/dev/null; done
  rm -rf "$work"   # the run folders (and the raw figures unless --raw put them elsewhere)
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "slow_links: interrupted" >&2; exit 130' INT
trap 'echo "slow_links: terminated" >&2; exit 143' TERM

# --- header --------------------------------------------------------------------------------
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no -- src include CMakeLists.txt 2>/dev/null | wc -l)
echo "# command: $cmdline"
echo "# date: $(date '+%Y-%m-%d %H:%M:%S %Z'); tree at commit $commit$( ((dirty)) && echo " (+ $dirty uncommitted files under src/ include/ CMakeLists.txt)")"
echo "# host: $(nproc) cores ($(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# The binary's own source: its build folder's CMakeCache names it; a git tree gives the commit,
# a snapshot (git archive) may carry it in a .commit file.
moe_src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$(dirname "$moe")/CMakeCache.txt" 2>/dev/null)
moe_from=
if [[ -n $moe_src && -f $moe_src/.commit ]]; then
  moe_from=" from $moe_src (commit $(cat "$moe_src/.commit"))"
elif [[ -n $moe_src ]] && c=$(git -C "$moe_src" rev-parse --short HEAD 2>/dev/null); then
  moe_from=" from $moe_src (tree at commit $c)"
fi
echo "# moe: $moe (built $(date -r "$moe" '+%Y-%m-%d %H:%M %Z')$moe_from)"
echo "# model: ${config#"$root"/}; data: $data"
echo "# $hosts emulated hosts x $per_host ranks, OMP_NUM_THREADS=$threads per rank ($((ranks * threads)) threads on $(nproc) cores$( ((ranks * threads > $(nproc))) && echo ": oversubscribed"))"
echo "# sync modes: $steps steps, first $warmup skipped; diloco: H=$inner, $diloco_steps steps, the last $((periods * inner)) measured ($periods whole period(s)); $rounds rounds"
env | grep -E '^(MOE_|OMP_)' | sed 's/^MOE_JOB_TOKEN=.*/MOE_JOB_TOKEN=(set)/; s/^/# env: /'
if ! emu_setup "${rate_list[0]}"; then
  echo "slow_links: SKIP: emulated hosts cannot be made here: $emu_reason"
  exit 77
fi
echo "# links: tbf on both ends of each host's veth (burst = 10 ms of bytes, at least 128 KiB), no added latency (no netem here); rates ${rates// /} Mbit/s"

# --- one run -------------------------------------------------------------------------------
mode_args() {  # mode -> the trainer's extra keys (one per line, for mapfile)
  local compress=(--parallel.grad_comm_dtype int8 --parallel.dispatch_dtype fp8 --parallel.combine_dtype bf16)
  case $1 in
    plain) printf '%s\n' --parallel.ep 4 --parallel.dp 1 ;;
    bf16) printf '%s\n' --parallel.ep 4 --parallel.dp 1 --parallel.grad_comm_dtype bf16 \
            --parallel.dispatch_dtype bf16 --parallel.combine_dtype bf16 ;;
    compressed) printf '%s\n' --parallel.ep 4 --parallel.dp 1 "${compress[@]}" ;;
    nodelimited) printf '%s\n' --parallel.ep 4 --parallel.dp 1 "${compress[@]}" \
                   --model.n_group 2 --model.topk_group 1 ;;
    diloco) printf '%s\n' --parallel.mode diloco --parallel.inner_steps "$inner" --parallel.ep "$diloco_ep" ;;
  esac
}
port=29700
run_one() {  # run_one ROUND RATE MODE
  local r=$1 rate=$2 mode=$3 out tag t0 wall rc=0 h load token s extra_env=() args=()
  tag=r${r}_${rate}_$mode out=$work/run/$tag
  rm -rf "$work/run"; mkdir -p "$out"
  s=$steps
  [[ $mode == diloco ]] && s=$diloco_steps
  [[ $mode == nodelimited ]] && extra_env=(MOE_COMM_ALGO_A2A=two_level)
  mapfile -t args < <(mode_args "$mode")
  [[ $emu_rate == "$rate" ]] || emu_set_rate "$rate" || die "$emu_reason"
  local train=("$moe" train --config "$config" --data.source "$data" --train.steps "$s"
               --train.eval_tokens 0 --train.sample_every 0 --checkpoint.every 0 --log.every 1
               --log.progress plain --samples 0 --checkpoint.dir "$out")
  [[ -n $batch ]] && train+=(--train.batch "$batch")
  [[ -n $seq_len ]] && train+=(--train.seq_len "$seq_len")
  train+=("${args[@]}")
  load=$(cut -d' ' -f1 /proc/loadavg)
  port=$((port + 1))
  token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  local before after
  before=$(emu_link_bytes)
  emu_sampler "$out/metrics.jsonl" "$raw/$tag.link" &
  sampler_pid=$!
  t0=$(date +%s.%N)
  bg_pids=()
  for ((h = 0; h < hosts; h++)); do
    timeout -k 10 "$timeout_s" ip netns exec "$(emu_ns $h)" env OMP_NUM_THREADS="$threads" \
      MOE_HOST_ID="host$h" MOE_JOB_TOKEN="$token" MOE_COMM_TIMEOUT=300 MOE_COMM_CONNECT_TIMEOUT=60 \
      "${extra_env[@]}" "$moe" launch --nnodes "$hosts" --node-rank "$h" --master-addr "$(emu_ip 0)" \
      --master-port "$port" --nproc-per-node "$per_host" -- "${train[@]}" >"$raw/$tag.host$h.log" 2>&1 &
    bg_pids+=($!)
  done
  local p
  for p in "${bg_pids[@]}"; do wait "$p" || rc=$?; done
  bg_pids=()
  wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  sleep 0.1   # let the sampler see the last record
  kill -TERM "$sampler_pid" 2>/dev/null; wait "$sampler_pid" 2>/dev/null; sampler_pid=
  after=$(emu_link_bytes)
  [[ -f $out/metrics.jsonl ]] && cp "$out/metrics.jsonl" "$raw/$tag.metrics.jsonl"
  [[ -f $out/run.toml ]] && cp "$out/run.toml" "$raw/$tag.run.toml"
  rm -rf "$work/run"
  "$py" - "$raw" "$tag" "$r" "$rate" "$mode" "$s" "$warmup" "$inner" "$periods" "$ranks" \
    "$rc" "$wall" "$load" "$before" "$after" "$summaries" <<'PY'
import json, math, os, re, statistics as st, sys
(rawdir, tag, rnd, rate, mode, steps, warm, inner, periods, ranks, rc, wall, load, before, after,
 out) = sys.argv[1:]
rnd, rate, steps, warm, inner, periods, ranks = map(int, (rnd, rate, steps, warm, inner, periods, ranks))
res = {"round": rnd, "rate_mbit": rate, "mode": mode, "steps": steps, "rc": int(rc),
       "wall_s": float(wall), "load_at_start": float(load)}
# measured steps: (m0, steps]
m0 = steps - periods * inner if mode == "diloco" else warm
res["measured"] = [m0 + 1, steps]
recs, run, syncs = {}, None, []
path = os.path.join(rawdir, tag + ".metrics.jsonl")
if os.path.exists(path):
    for line in open(path):
        try:
            j = json.loads(line)
        except ValueError:
            continue
        k = j.get("kind")
        if k == "run": run = j
        elif k == "train": recs[int(j["step"])] = j
        elif k == "diloco_sync": syncs.append(j)
def log_reason():  # the first error line of the ranks' logs
    for h in range(2):
        p = os.path.join(rawdir, f"{tag}.host{h}.log")
        if not os.path.exists(p): continue
        for line in open(p, errors="replace"):
            if re.search(r"error|\bfail|unknown|not allowed|\[config\]|exception", line, re.I):
                return line.strip()[:300]
    return None
why = None
if int(rc) != 0 or run is None:
    why = f"exit {rc}" + (f": {log_reason()}" if log_reason() else "")
else:
    missing = [s for s in range(m0 + 1, steps + 1) if s not in recs]
    if missing:
        why = f"no train record for steps {missing[:5]}{'...' if len(missing) > 5 else ''}"
    elif mode == "diloco":
        n = sum(1 for x in syncs if m0 < int(x["step"]) <= steps)
        if run.get("mode") != "diloco" or n < periods:
            why = (f"DiLoCo not in effect (run record mode {run.get('mode')!r}, {n} outer syncs in "
                   f"steps {m0 + 1}..{steps}, expected {periods}): this binary has no DiLoCo")
    elif mode == "nodelimited":
        mc = run.get("model", {})
        if mc.get("n_group") != 2 or mc.get("topk_group") != 1:
            why = (f"no group-limited routing in this binary (run record: n_group "
                   f"{mc.get('n_group')!r}, topk_group {mc.get('topk_group')!r})")
if why is not None:
    res["failed"] = why
else:
    t = run["train"]
    tps_step = t["batch"] * t["seq_len"] * t.get("accum", 1)
    meas = [recs[s] for s in range(m0 + 1, steps + 1)]
    walls = [tps_step / float(x["tokens_per_s"]) for x in meas]
    res.update(tokens_per_step=tps_step, layout={"ranks": run.get("ranks"), "dp": run.get("dp"),
               "ep": run.get("ep")}, steps_used=len(meas))
    res["tokens_per_s"] = tps_step * len(meas) / sum(walls)
    res["median_step_tokens_per_s"] = st.median(float(x["tokens_per_s"]) for x in meas)
    res["wall_step_s"] = sum(walls) / len(meas)
    for k in ("step_s", "comm_exposed_s", "grad_wait_s", "param_gather_s", "dispatch_s"):
        if k in meas[0]: res[k] = sum(float(x.get(k, 0)) for x in meas) / len(meas)
    if mode == "diloco":
        res["groups"] = run.get("groups")
        res["outer_sync_s"] = [float(x["seconds"]) for x in syncs if m0 < int(x["step"]) <= steps]
        res["outer_bytes"] = [{k: v for k, v in x.items() if "bytes" in k} for x in syncs
                              if m0 < int(x["step"]) <= steps]
    # the trainer's own byte counters, if it has them: per-step means over the measured steps
    tb = {}
    for k in sorted({k for x in meas for k in x if "bytes" in k}):
        v = [x[k] for x in meas if isinstance(x.get(k), (int, float))]
        if len(v) == len(meas): tb[k] = sum(v) / len(v)
    if tb: res["trainer_bytes_per_step"] = tb
    # link counters at the records of steps m0 and `steps` (first sample of each)
    samples = {}
    lp = os.path.join(rawdir, tag + ".link")
    if os.path.exists(lp):
        for line in open(lp):
            f = line.split()
            if len(f) >= 2 + 2 * 2 and int(f[0]) not in samples:
                samples[int(f[0])] = (float(f[1]), [int(v) for v in f[2:]])
    if m0 in samples and steps in samples:
        a, b = samples[m0][1], samples[steps][1]
        n = len(meas)
        sent = [(b[2 * h] - a[2 * h]) / n for h in range(len(a) // 2)]  # per host, per step
        res["link_sent_per_step"] = sent
        res["link_bytes_per_step"] = sum(sent)
        res["inter_host_bytes_per_rank_step"] = sum(sent) / ranks
        res["link_util"] = max(sent) / (rate * 1e6 / 8 * res["wall_step_s"])
    else:
        res["link_note"] = f"no link samples at steps {m0} and {steps}"
    bf, af = [int(v) for v in before.split()], [int(v) for v in after.split()]
    res["link_bytes_run"] = sum(af[2 * h] - bf[2 * h] for h in range(len(bf) // 2))
with open(out, "a") as f: f.write(json.dumps(res) + "\n")
name = f"round {rnd}  {rate:>5} Mbit/s  {mode:<11}"
if "failed" in res:
    print(f"{name} FAILED: {res['failed']}")
else:
    mb = lambda v: "-" if v is None else f"{v / 1e6:.2f} MB"
    extra = ""
    t = res.get("trainer_bytes_per_step", {})
    if "net_bytes" in t:
        extra = f"  (trainer: {t['net_bytes'] / ranks / 1e6:.2f} MB/rank/step to other hosts)"
    busy = f"  (busiest link {100 * res['link_util']:.0f}% busy)" if "link_util" in res else ""
    if mode == "diloco":
        extra += "  outer sync " + ", ".join(f"{v:.2f} s" for v in res["outer_sync_s"])
    print(f"{name} {res['tokens_per_s']:8.1f} tok/s  wall/step {res['wall_step_s']:.3f} s  "
          f"to other hosts {mb(res.get('inter_host_bytes_per_rank_step'))}/rank/step  "
          f"links {mb(res.get('link_bytes_per_step'))}/step{busy}{extra}  "
          f"(run {float(wall):.0f} s, load {float(load):.2f})")
PY
}

# --- rounds: every mode at every rate once per round; rate order alternates, modes rotate ---
n=${#mode_list[@]}
for ((r = 1; r <= rounds; r++)); do
  order=("${rate_list[@]}")
  ((r % 2 == 0)) && order=($(printf '%s\n' "${rate_list[@]}" | tac))
  for rate in "${order[@]}"; do
    for ((i = 0; i < n; i++)); do
      run_one "$r" "$rate" "${mode_list[$(((i + r - 1) % n))]}"
    done
  done
done

# --- summary -------------------------------------------------------------------------------
MOE_BENCH_DILOCO_EP=$diloco_ep "$py" - "$summaries" "$rates" "${mode_list[@]}" <<'PY'
import json, statistics as st, sys
path, rates, order = sys.argv[1], [int(r) for r in sys.argv[2].split(",")], sys.argv[3:]
runs = [json.loads(l) for l in open(path)]
ok = [x for x in runs if "failed" not in x]
def med(v):
    v = [x for x in v if x is not None]
    return st.median(v) if v else None
def f(v, fmt, scale=1):
    return "-" if v is None else format(v * scale, fmt)
def layout(m):
    import os
    e = int(os.environ.get("MOE_BENCH_DILOCO_EP", "2"))
    return {"diloco": f"2 groups (hosts) x dp{2 // e} ep{e}",
            "nodelimited": "ep4, topk_group 1 of 2"}.get(m, "ep4 (dp1)")
ratio = {}
for rate in rates:
    for m in order:
        v = []
        for x in ok:
            if x["rate_mbit"] != rate or x["mode"] != m: continue
            p = [y for y in ok if y["rate_mbit"] == rate and y["mode"] == "plain" and y["round"] == x["round"]]
            if p: v.append(x["tokens_per_s"] / p[0]["tokens_per_s"])
        ratio[rate, m] = v
tkeys = sorted({k for x in ok for k in x.get("trainer_bytes_per_step", {})})
def tb(x, k):  # the trainer's per-step bytes (summed over ranks)
    return x.get("trainer_bytes_per_step", {}).get(k)
ranks = 4
print()
print("## Medians over rounds")
print("tok/s: tokens of the measured steps / their wall time. Bytes per step: 'links' from the switch ports'")
print("counters (frames: TCP/IP headers and ACKs included), 'trainer' from the train records (payload; the")
print("trainer sums its ranks: net_bytes to other hosts, sent_bytes in all, shared memory included).")
hdr = ["mode", "Mbit/s", "layout", "tok/s job", "vs plain", "wall/step s",
       "to other hosts MB/rank (links)", "to other hosts MB/rank (trainer)", "sent in all MB/step (trainer)",
       "links MB/step", "link busy", "runs"]
print("| " + " | ".join(hdr) + " |")
print("|" + " --- |" * len(hdr))
for rate in rates:
    for m in order:
        rs = [x for x in ok if x["rate_mbit"] == rate and x["mode"] == m]
        bad = [x for x in runs if x["rate_mbit"] == rate and x["mode"] == m and "failed" in x]
        if not rs:
            why = bad[0]["failed"] if bad else "no run"
            why = why if len(why) <= 110 else why[:107] + "..."
            print(f"| {m} | {rate} | {layout(m)} | FAILED: {why} |" + " |" * (len(hdr) - 4))
            continue
        g = lambda k: med([x.get(k) for x in rs])
        row = [m, str(rate), layout(m), f(g("tokens_per_s"), ".0f"),
               "1.00" if m == "plain" else f(med(ratio[rate, m]), ".2f"), f(g("wall_step_s"), ".3f"),
               f(g("inter_host_bytes_per_rank_step"), ".3f", 1e-6),
               f(med([tb(x, "net_bytes") for x in rs]), ".3f", 1e-6 / ranks),
               f(med([tb(x, "sent_bytes") for x in rs]), ".3f", 1e-6),
               f(g("link_bytes_per_step"), ".3f", 1e-6),
               f(g("link_util"), ".0f", 100) + ("%" if g("link_util") is not None else "")]
        row.append(f"{len(rs)}/{len(rs) + len(bad)}")
        print("| " + " | ".join(row) + " |")
# A compression mode whose bytes match plain's: its keys had no effect in this binary.
for rate in rates:
    pb = med([x.get("link_bytes_per_step") for x in ok if x["rate_mbit"] == rate and x["mode"] == "plain"])
    for m in ("bf16", "compressed", "nodelimited"):
        mb = med([x.get("link_bytes_per_step") for x in ok if x["rate_mbit"] == rate and x["mode"] == m])
        if pb and mb and mb > 0.9 * pb:
            print(f"note: {m} at {rate} Mbit/s sends {mb / pb:.2f}x plain's bytes per step: "
                  "its compression is not in effect in this binary")
if tkeys:
    print()
    print("## The trainer's byte counters per step, MB per rank (its sums / 4 ranks; medians over rounds)")
    print("%-11s %6s " % ("mode", "Mbit/s") + " ".join("%14s" % k.replace("net_bytes_", "net:") for k in tkeys))
    for rate in rates:
        for m in order:
            rs = [x for x in ok if x["rate_mbit"] == rate and x["mode"] == m]
            if rs:
                print("%-11s %6d " % (m, rate) + " ".join(
                    "%14s" % f(med([tb(x, k) for x in rs]), ".3f", 1e-6 / ranks) for k in tkeys))
print()
print("## Per round: tok/s (speedup vs plain of the same round and rate)")
for rate in rates:
    for m in order:
        rs = sorted((x for x in ok if x["rate_mbit"] == rate and x["mode"] == m), key=lambda x: x["round"])
        if not rs: continue
        parts = []
        for x in rs:
            p = [y for y in ok if y["rate_mbit"] == rate and y["mode"] == "plain" and y["round"] == x["round"]]
            parts.append(f"r{x['round']}: {x['tokens_per_s']:.0f}" +
                         (f" ({x['tokens_per_s'] / p[0]['tokens_per_s']:.2f}x)" if p and m != "plain" else ""))
        print(f"{m:<11} {rate:>5} Mbit/s  " + "  ".join(parts))
dl = [x for x in ok if x["mode"] == "diloco"]
if dl:
    print()
    print("## DiLoCo outer syncs (per run: seconds of each sync in the measured period, bytes per rank the trainer reports)")
    for x in sorted(dl, key=lambda x: (x["rate_mbit"], x["round"])):
        print(f"{x['rate_mbit']:>5} Mbit/s r{x['round']}: " + ", ".join(f"{v:.2f} s" for v in x["outer_sync_s"]) +
              "; trainer: " + "; ".join(", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in b.items()
                                                   if isinstance(v, (int, float))) or "-"
                                         for b in x["outer_bytes"]))
print()
print("## Targets (issue 16, item 3), at the slowest rate")
slow = min(rates)
for m, goal in (("compressed", 2), ("diloco", 5)):
    v = med(ratio.get((slow, m), []))
    if v is None:
        print(f"{m} >= {goal}x plain at {slow} Mbit/s: no figure ({m} or plain did not run)")
    else:
        print(f"{m} >= {goal}x plain at {slow} Mbit/s: {v:.2f}x -> {'held' if v >= goal else 'NOT met'}")
PY
echo "# raw figures: $summaries$( [[ $raw == "$work/raw" ]] && echo " (removed at exit: pass --raw DIR to keep them)")"
