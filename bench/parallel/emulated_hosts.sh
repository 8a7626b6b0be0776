# Emulated hosts on one machine for the benchmarks in bench/parallel (sourced, not run).
#
# M "hosts", each a network namespace, joined through a switch namespace (a Linux bridge) by
# veth pairs whose both ends are capped with `tc qdisc tbf` (scripts/emulate_cluster.sh's
# setup). Each host runs `moe launch --nnodes M --node-rank h --master-addr $(emu_ip 0)` with
# MOE_HOST_ID=host<h>: ranks of one host use shared memory, hosts TCP over the capped links.
# No added latency (this kernel has no netem).
#
#   emu_init PREFIX SUBNET HOSTS  names only: namespaces PREFIXh0.., switch PREFIXsw, veths
#                                 PREFIXa<h>/PREFIXb<h> (carry the caller's pid in PREFIX so
#                                 concurrent runs do not collide); SUBNET like 10.214.0
#   emu_setup RATE_MBIT           makes them; returns 0, or 1 with the reason in emu_reason
#   emu_set_rate RATE_MBIT        re-caps every link (both directions) at another rate
#   emu_ns H / emu_ip H           host H's namespace / address
#   emu_link_bytes                one line: for each host, the bytes it has sent over its link
#                                 and received from it (the switch ports' rx and tx counters,
#                                 Ethernet frames: TCP/IP headers and ACKs included)
#   emu_sampler METRICS OUT       runs in the switch namespace until killed: each time METRICS
#                                 (a metrics.jsonl) gains a {"kind":"train"} record, appends
#                                 "STEP TIME sent_0 recv_0 sent_1 recv_1 ..." to OUT (polls
#                                 every 20 ms with shell builtins: no process per sample)
#   emu_teardown                  kills whatever still runs inside the namespaces, deletes them
#
# Settings after emu_setup: emu_ok (1 when made), emu_rate, emu_burst (tbf burst, bytes).
# Needs root, ip and tc with tbf; without them emu_setup says why in emu_reason.

emu_init() {
  emu_pfx=$1 emu_subnet=$2 emu_hosts=$3
  emu_sw="${emu_pfx}sw" emu_ns=() emu_ok=0 emu_reason="not set up" emu_rate= emu_burst=
  local h
  for ((h = 0; h < emu_hosts; h++)); do emu_ns+=("${emu_pfx}h$h"); done
}

emu_ns() { echo "${emu_ns[$1]}"; }
emu_ip() { echo "$emu_subnet.$(($1 + 1))"; }

emu_burst_for() {  # 10 ms worth of bytes at the rate, at least 128 KiB (GSO packets are 64 KiB)
  local b=$(($1 * 1000000 / 8 / 100))
  ((b < 131072)) && b=131072
  echo "$b"
}

emu_setup() {
  local e c h rate=$1
  [[ $(id -u) == 0 ]] || { emu_reason="not root (network namespaces need CAP_NET_ADMIN + CAP_SYS_ADMIN)"; return 1; }
  command -v ip >/dev/null || { emu_reason="no 'ip' command (Debian: iproute2)"; return 1; }
  command -v tc >/dev/null || { emu_reason="no 'tc' command (Debian: iproute2)"; return 1; }
  e=$(ip netns add "$emu_sw" 2>&1) || { emu_reason="cannot create a network namespace: $e"; return 1; }
  e=$(ip netns exec "$emu_sw" ip link set lo up 2>&1) || { emu_reason="cannot enter a namespace: $e"; return 1; }
  local cmds=("ip -n $emu_sw link add br0 type bridge" "ip -n $emu_sw link set br0 up")
  for ((h = 0; h < emu_hosts; h++)); do
    cmds+=("ip netns add ${emu_ns[h]}"
           "ip link add ${emu_pfx}a$h type veth peer name ${emu_pfx}b$h"
           "ip link set ${emu_pfx}a$h netns ${emu_ns[h]}"
           "ip link set ${emu_pfx}b$h netns $emu_sw"
           "ip -n ${emu_ns[h]} link set ${emu_pfx}a$h name eth0"
           "ip -n $emu_sw link set ${emu_pfx}b$h name vh$h"
           "ip -n $emu_sw link set vh$h master br0"
           "ip -n $emu_sw link set vh$h up"
           "ip -n ${emu_ns[h]} link set lo up"
           "ip -n ${emu_ns[h]} addr add $emu_subnet.$((h + 1))/24 dev eth0"
           "ip -n ${emu_ns[h]} link set eth0 up")
  done
  for c in "${cmds[@]}"; do
    # shellcheck disable=SC2086
    e=$($c 2>&1) || { emu_reason="'$c' failed: $e"; return 1; }
  done
  emu_set_rate "$rate" || return 1
  emu_ok=1
}

emu_set_rate() {  # tbf on each host's eth0 (host -> switch) and the switch's port (switch -> host)
  local h e rate=$1 burst
  burst=$(emu_burst_for "$rate")
  for ((h = 0; h < emu_hosts; h++)); do
    e=$(ip netns exec "${emu_ns[h]}" tc qdisc replace dev eth0 root handle 1: tbf \
          rate "${rate}mbit" burst "$burst" latency 200ms 2>&1) &&
    e=$(ip netns exec "$emu_sw" tc qdisc replace dev "vh$h" root handle 1: tbf \
          rate "${rate}mbit" burst "$burst" latency 200ms 2>&1) ||
      { emu_reason="tc tbf cannot be set up on this kernel ($e): no bandwidth cap possible"; return 1; }
  done
  emu_rate=$rate emu_burst=$burst
}

emu_link_bytes() {
  ip netns exec "$emu_sw" bash -c '
    for ((h = 0; h < '"$emu_hosts"'; h++)); do
      read -r rx </sys/class/net/vh$h/statistics/rx_bytes
      read -r tx </sys/class/net/vh$h/statistics/tx_bytes
      printf "%s %s " "$rx" "$tx"
    done; echo'
}

# Run it in the background (`emu_sampler M OUT & pid=$!`): it replaces that subshell, so kill
# $pid stops it (and emu_teardown does).
emu_sampler() {
  exec ip netns exec "$emu_sw" bash -c '
    metrics=$1 out=$2 hosts=$3
    exec {z}<> <(:)  # a pipe nobody writes to: read -t on it sleeps without a process
    sample() {
      local h rx tx s="$1 $EPOCHREALTIME"
      for ((h = 0; h < hosts; h++)); do
        read -r rx </sys/class/net/vh$h/statistics/rx_bytes
        read -r tx </sys/class/net/vh$h/statistics/tx_bytes
        s+=" $rx $tx"
      done
      echo "$s" >>"$out"
    }
    sample 0
    until [[ -f $metrics ]]; do read -r -t 0.02 -u "$z"; done
    exec {m}<"$metrics"
    buf=
    while :; do
      while IFS= read -r -u "$m" line; do
        line=$buf$line buf=
        [[ $line == *"\"kind\":\"train\""* && $line =~ \"step\":([0-9]+) ]] && sample "${BASH_REMATCH[1]}"
      done
      buf+=$line  # a record not yet complete
      read -r -t 0.02 -u "$z"
    done' emu_sampler "$1" "$2" "$emu_hosts"
}

emu_teardown() {
  local n p h
  for n in "${emu_ns[@]}" "$emu_sw"; do
    [[ -n $n && -e /var/run/netns/$n ]] || continue
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  done
  for n in "${emu_ns[@]}" "$emu_sw"; do
    [[ -n $n && -e /var/run/netns/$n ]] && ip netns del "$n" 2>/dev/null
  done
  for ((h = 0; h < ${emu_hosts:-0}; h++)); do ip link del "${emu_pfx}a$h" 2>/dev/null; done
  emu_ok=0
}
