#!/usr/bin/env bash
# Benchmarks one spread tenant (ROOST_FLEET_SPREAD) over a fleet that
# scripts/fleet.sh starts on this machine, with cmd/roost-bench, for
# docs/benchmarks.md ("A tenant over several nodes"):
#
#   scripts/bench-spread.sh p2p        # 3 nodes: publishers on node 1, subscribers
#                                      # on node 2 (cross) against both on node 1
#                                      # (same), alternating; then the same-node
#                                      # runs on one node without spreading (single)
#   scripts/bench-spread.sh fanout     # 3 nodes: one publisher on node 1, its
#                                      # subscribers on node 1 (local) or on all
#                                      # three (spread)
#   scripts/bench-spread.sh capacity   # 1, 2, 3 nodes: idle connections of one
#                                      # tenant until connects fail; RSS per node
#   scripts/bench-spread.sh churn      # 3 nodes: p2p QoS 1 from node 1 to node 2
#                                      # while subscriptions on node 3 come and go
#   scripts/bench-spread.sh all
#
# Each run's report (roost-bench -json), the CPU time each process used
# during it, Redis's command statistics and a summary go to
# $ROOST_BENCH_OUT (default bench/results/spread). Nothing here is
# asserted: the figures are for reading.
#
# Environment:
#   ROOST_BIN, ROOST_BENCH_BIN  the binaries (default bin/roost and
#                         bin/roost-bench, built when missing)
#   ROOST_FLEET_DIR       the fleet's state directory (default
#                         /tmp/roost-bench-spread); stopped and removed after
#   ROUNDS                p2p and fanout: alternations of the layouts (5)
#   P2P_PAIRS, P2P_DURATION   8, 5s
#   P2P_RATES             QoS 1 fixed rates, msgs/s over all pairs ("1000 2000 3000 4000"),
#                         besides as fast as the publishers go
#   P2P_Q0_RATE           the QoS 0 fixed rate (2000)
#   FANOUT_SUBS, FANOUT_RATE, FANOUT_DURATION   300, 50, 10s
#   CAP_NODES             the fleet sizes for capacity ("1 2 3")
#   CAP_HOLD              how long capacity's clients stay connected (60s)
#   CAP_MAX_FAILURES      each client process stops connecting after this many
#                         failed connects (300)
#   CAP_TRY_PER_NODE      connects tried per node (22000: more than the 20,000
#                         open files a process may have here)
#   CHURN_PAIRS           churn: subscriptions on topics of their own that
#                         come and go together on node 3, again and again
#                         ("0 10 50 200"; 0 is the run without churn)
#
# Needs what scripts/fleet.sh needs (Postgres, redis-server, curl,
# python3), and ss (iproute2) for counting connections.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${ROOST_BENCH_OUT:-$root/bench/results/spread}
export ROOST_FLEET_DIR=${ROOST_FLEET_DIR:-/tmp/roost-bench-spread}
rounds=${ROUNDS:-5}
pairs=${P2P_PAIRS:-8}
p2p_duration=${P2P_DURATION:-5s}
p2p_rates=${P2P_RATES:-1000 2000 3000 4000}
p2p_q0_rate=${P2P_Q0_RATE:-2000}
fan_subs=${FANOUT_SUBS:-300}
fan_rate=${FANOUT_RATE:-50}
fan_duration=${FANOUT_DURATION:-10s}
cap_nodes=${CAP_NODES:-1 2 3}
cap_hold=${CAP_HOLD:-60s}
cap_max_failures=${CAP_MAX_FAILURES:-300}
cap_try=${CAP_TRY_PER_NODE:-22000}
churn_pairs=${CHURN_PAIRS:-0 10 50 200}
checks=1 # run waits for a quiet machine and repeats disturbed runs

say() { echo "bench-spread: $*" >&2; }
die() { say "$*"; exit 1; }

binary() { # binary VAR DEFAULT PACKAGE
  local bin=${!1:-$root/$2}
  case $bin in /*) ;; *) bin="$PWD/$bin" ;; esac
  if [ ! -x "$bin" ]; then
    say "building $bin"
    (cd "$root" && go build -o "$bin" "$3") >&2
  fi
  echo "$bin"
}
roost=$(binary ROOST_BIN bin/roost ./cmd/roost)
bench=$(binary ROOST_BENCH_BIN bin/roost-bench ./cmd/roost-bench)
export ROOST_BIN=$roost
for tool in python3 curl ss redis-cli; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
mkdir -p "$out"

# ---- the fleet and the tenant ----

clients=() # pids of client processes started in the background
cleanup() {
  local pid
  for pid in "${clients[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$root/scripts/fleet.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

# fleet_up N spread|single: a fleet of N nodes, spreading tenants or not,
# and a tenant "bench" on the enterprise plan with every rate and limit
# lifted and a device any client id may use; sets $secret and the fleet's
# ROOST_* variables.
fleet_up() {
  local n=$1 mode=$2 exports token big=1099511627776
  say "fleet of $n node(s), $mode"
  if [ "$mode" = spread ]; then
    exports=$(ROOST_FLEET_SPREAD=true "$root/scripts/fleet.sh" start "$n" 2>"$out/fleet.log")
  else
    exports=$(env -u ROOST_FLEET_SPREAD "$root/scripts/fleet.sh" start "$n" 2>"$out/fleet.log")
  fi
  eval "$exports"
  token=$(api POST /v1/signup "" '{"email":"bench@example.com","password":"correct horse battery"}' | json token)
  api POST /v1/tenants "$token" '{"slug":"bench"}' >/dev/null
  secret=$(api POST /v1/tenants/bench/devices "$token" '{"name":"bench","client_ids":"any"}' | json secret)
  api PATCH /v1/admin/tenants/bench "$ROOST_ADMIN_TOKEN" "{\"plan\":\"enterprise\",\"quotas\":{
    \"max_connections\":$big,\"publish_rate\":$big,\"tenant_publish_rate\":$big,\"connect_rate\":$big,
    \"bandwidth_in\":$big,\"bandwidth_out\":$big,\"messages_per_month\":$big,\"max_subscriptions\":$big}}" >/dev/null
  sleep 1 # the quota change reaches the nodes
}

fleet_down() { "$root/scripts/fleet.sh" stop 2>>"$out/fleet.log"; }

api() { # api METHOD PATH TOKEN [BODY]
  local args=(-fsS -X "$1" "$ROOST_API_URL$2" -H 'Content-Type: application/json')
  [ -n "$3" ] && args+=(-H "Authorization: Bearer $3")
  [ -n "${4:-}" ] && args+=(-d "$4")
  curl "${args[@]}"
}

json() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

node() { local v="ROOST_NODE$1_$2"; echo "${!v}"; }
redis_pid() { cat "$ROOST_FLEET_DIR/redis/redis.pid"; }

# cpu PID: CPU time used so far, in clock ticks (user + system).
cpu() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# busy: CPU time the whole machine has been busy, in clock ticks.
busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# quiet: waits (up to QUIET_WAIT seconds, 60) until the machine is idle
# but for the fleet: less than 15% of a CPU busy over 2 s. The fleet's
# idle nodes use a few percent; another test on the machine uses more.
quiet() {
  local a b waited=0
  while ((waited < ${QUIET_WAIT:-60})); do
    a=$(busy)
    sleep 2
    b=$(busy)
    (((b - a) < 30)) && return 0
    ((waited == 0)) && say "waiting for the machine to be quiet ($(((b - a) / 2))% of a CPU busy)"
    waited=$((waited + 2))
  done
  say "the machine is not quiet; going on"
}

# snapshot FILE: every process's pid, CPU ticks, parent and name.
snapshot() {
  python3 - "$1" <<'PY'
import os, sys
with open(sys.argv[1], "w") as out:
    for pid in os.listdir("/proc"):
        try:
            s = open("/proc/%s/stat" % pid).read()
        except OSError:
            continue
        f = s[s.rindex(")") + 2:].split()
        out.write("%s %d %s %s\n" % (pid, int(f[11]) + int(f[12]), f[1], s[s.index("(") + 1:s.rindex(")")].replace(" ", "_")))
PY
}

# cpu_report BEFORE AFTER WALL BENCH BUSY PIDS...: the CPU seconds each
# of the fleet's processes (PIDS: nodes, then Redis, then the control
# plane) used between two snapshots, the load generator's, and "foreign":
# what processes that are not the fleet's, this script's or the kernel's
# used meanwhile (another test on the machine).
cpu_report() {
  python3 - "$$" "$@" <<'PY'
import json, sys
me, before, after, wall, bench, busy, pids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7:]
def read(path):
    got = {}
    for line in open(path):
        pid, ticks, ppid, comm = line.split()
        got[pid] = (int(ticks), ppid, comm)
    return got
b, a = read(before), read(after)
used = lambda pid: (a[pid][0] - b.get(pid, (0,))[0]) / 100 if pid in a else 0
names = ["node%d" % (i + 1) for i in range(len(pids) - 2)] + ["redis", "controlplane"]
rep = {"wall": float(wall), "busy_cpus": int(busy) / 100 / float(wall), "bench": float(bench)}
rep.update({n: used(p) for n, p in zip(names, pids)})
rep["foreign"] = sum(used(p) for p, (_, ppid, comm) in a.items()
                     if p not in pids and p != me and ppid != me and ppid != "2" and p != "2" and comm != "postgres")
print(json.dumps(rep))
PY
}

# children_cpu FILE: CPU seconds of this shell's finished children, into
# FILE (times must run in this shell, not in a subshell of its own).
children_cpu() {
  times >"$1"
  awk 'NR == 2 { gsub(/[ms]/, " "); print $1 * 60 + $2 + $3 * 60 + $4 }' "$1"
}

minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

# run NAME ARGS...: one roost-bench invocation against the fleet: its
# report in NAME.json and NAME.txt, the CPU seconds each process used in
# NAME.cpu.json, Redis's command statistics in NAME.redis. A run during
# which other processes used more than FOREIGN_MAX seconds of CPU (0.5) is
# made again, up to twice.
run() {
  local name=$1 attempt foreign
  shift
  for attempt in 1 2 3; do
    measure "$name" "$@"
    ((checks)) || return 0
    foreign=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["foreign"])' "$out/$name.cpu.json")
    awk -v f="$foreign" -v m="${FOREIGN_MAX:-0.5}" 'BEGIN { exit !(f <= m) }' && return 0
    say "$name: other processes used $foreign s of CPU during the run (attempt $attempt)"
  done
}

measure() {
  local name=$1 i pids=() b0 b1 t0 t1 m0 m1 tmp="$out/.times"
  shift
  for ((i = 1; i <= ROOST_FLEET_NODES; i++)); do pids+=("$(node "$i" PID)"); done
  pids+=("$(redis_pid)" "$ROOST_CONTROLPLANE_PID")
  if ((checks)); then quiet; fi
  redis-cli -u "$ROOST_FLEET_REDIS_URL" config resetstat >/dev/null
  snapshot "$tmp.before"
  children_cpu "$tmp" >"$tmp.0"
  m0=$(busy)
  t0=$(date +%s.%N)
  "$bench" -name "$name" -username bench/bench -password "$secret" -runs 1 -json "$out/$name.json" "$@" | tee "$out/$name.txt" | sed "s/^/  $name: /" >&2
  t1=$(date +%s.%N)
  m1=$(busy)
  children_cpu "$tmp" >"$tmp.1"
  snapshot "$tmp.after"
  b0=$(cat "$tmp.0")
  b1=$(cat "$tmp.1")
  redis-cli -u "$ROOST_FLEET_REDIS_URL" info commandstats >"$out/$name.redis"
  cpu_report "$tmp.before" "$tmp.after" "$(minus "$t1" "$t0")" "$(minus "$b1" "$b0")" "$((m1 - m0))" "${pids[@]}" >"$out/$name.cpu.json"
}

# ---- p2p: cross-node against same-node ----

p2p_loads() { # p2p_loads LAYOUT ROUND ADDRESS-FLAGS...
  local layout=$1 r=$2 rate
  shift 2
  run "p2p-q1max-$layout-$r" -scenario p2p -qos 1 -pairs "$pairs" -duration "$p2p_duration" "$@"
  for rate in $p2p_rates; do
    run "p2p-q1r$rate-$layout-$r" -scenario p2p -qos 1 -pairs "$pairs" -rate "$rate" -duration "$p2p_duration" "$@"
  done
  run "p2p-q0r$p2p_q0_rate-$layout-$r" -scenario p2p -qos 0 -pairs "$pairs" -rate "$p2p_q0_rate" -duration "$p2p_duration" "$@"
}

do_p2p() {
  local r
  rm -f "$out"/p2p-*
  fleet_up 3 spread
  for ((r = 1; r <= rounds; r++)); do
    p2p_loads same "$r" -addr "$(node 1 MQTT)"
    p2p_loads cross "$r" -pub-addr "$(node 1 MQTT)" -sub-addr "$(node 2 MQTT)"
  done
  fleet_down
  fleet_up 1 single
  for ((r = 1; r <= rounds; r++)); do
    p2p_loads single "$r" -addr "$(node 1 MQTT)"
  done
  fleet_down
  summarise p2p
}

# ---- fan-out: one publisher, subscribers on one node or on three ----

do_fanout() {
  local r q all
  rm -f "$out"/fanout-*
  fleet_up 3 spread
  all="$(node 1 MQTT),$(node 2 MQTT),$(node 3 MQTT)"
  for ((r = 1; r <= rounds; r++)); do
    for q in 0 1; do
      run "fanout-q$q-local-$r" -scenario fanout -qos "$q" -subs "$fan_subs" -rate "$fan_rate" -duration "$fan_duration" -addr "$(node 1 MQTT)"
      run "fanout-q$q-spread-$r" -scenario fanout -qos "$q" -subs "$fan_subs" -rate "$fan_rate" -duration "$fan_duration" \
        -pub-addr "$(node 1 MQTT)" -sub-addr "$all"
    done
  done
  fleet_down
  summarise fanout
}

# ---- capacity: idle connections over 1, 2, 3 nodes ----

# node_state K FILE: each node's resident memory, open files and
# established MQTT connections, and Redis's memory, as JSON.
node_state() {
  local k=$1 i pid port sep=""
  {
    echo "{"
    for ((i = 1; i <= k; i++)); do
      pid=$(node "$i" PID)
      port=$(node "$i" MQTT)
      port=${port##*:}
      printf '%s"node%d": {"rss_kb": %s, "fds": %s, "established": %s, "readyz": "%s"}\n' "$sep" "$i" \
        "$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")" "$(find "/proc/$pid/fd" -mindepth 1 | wc -l)" \
        "$(ss -Htn state established "( sport = :$port )" | wc -l)" \
        "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$(node "$i" HTTP)/readyz" || true)"
      sep=","
    done
    printf ', "redis": {"rss_kb": %s}\n}\n' "$(awk '/^VmRSS/ {print $2}' "/proc/$(redis_pid)/status")"
  } >"$2"
}

do_capacity() {
  local k procs per addrs i j name pid
  rm -f "$out"/capacity-*
  for k in $cap_nodes; do
    fleet_up "$k" spread
    addrs=$(node 1 MQTT)
    for ((i = 2; i <= k; i++)); do addrs+=",$(node "$i" MQTT)"; done
    node_state "$k" "$out/capacity-$k-before.json"
    # A node takes fewer than its open-file limit (20,000 here), and so
    # does each client process: k+1 of them try more than k nodes take.
    procs=$((k + 1))
    per=$(((k * cap_try + procs - 1) / procs))
    say "capacity over $k node(s): $procs client processes of $per connections each"
    clients=()
    for ((j = 1; j <= procs; j++)); do
      name="capacity-$k-client$j"
      "$bench" -name "$name" -username bench/bench -password "$secret" -client-prefix "c$j-" -runs 1 \
        -scenario hold -addr "$addrs" -n "$per" -max-failures "$cap_max_failures" -dial-timeout 3s \
        -hold "$cap_hold" -keepalive 600 -json "$out/$name.json" >"$out/$name.txt" 2>&1 &
      clients+=($!)
    done
    # Once every client process holds what it could connect, and a little
    # after, the nodes are read.
    for ((j = 1; j <= procs; j++)); do
      until grep -q holding "$out/capacity-$k-client$j.txt" 2>/dev/null || ! kill -0 "${clients[j - 1]}" 2>/dev/null; do
        sleep 1
      done
    done
    sleep 5
    node_state "$k" "$out/capacity-$k-held.json"
    say "capacity over $k node(s): $(tr -d '\n' <"$out/capacity-$k-held.json")"
    for pid in "${clients[@]}"; do wait "$pid" || say "a client process failed (pid $pid)"; done
    clients=()
    for ((i = 1; i <= k; i++)); do
      grep -c "too many open files" "$ROOST_FLEET_DIR/node$i.log" >"$out/capacity-$k-node$i-emfile.txt" || true
    done
    fleet_down
  done
  summarise capacity
}

# ---- churn: publishes while subscriptions elsewhere come and go ----

fabric_counters() { # fabric_counters I: node I's roost_fabric_* metrics
  curl -fsS -H "Authorization: Bearer $ROOST_ADMIN_TOKEN" "$(node "$1" HTTP)/metrics" | grep '^roost_fabric' || true
}

do_churn() {
  local n
  rm -f "$out"/churn-*
  fleet_up 3 spread
  checks=0 # the churn is what is measured
  for n in $churn_pairs; do
    clients=()
    if ((n > 0)); then
      # n subscribers on topics of their own (and n publishers) connect to
      # node 3, subscribe, and go, again and again: 2n route changes a turn.
      (
        while :; do
          "$bench" -username bench/bench -password "$secret" -client-prefix churn- -addr "$(node 3 MQTT)" \
            -scenario p2p -qos 0 -pairs "$n" -rate 100 -duration 100ms -runs 1 >/dev/null 2>&1 || sleep 0.1
        done
      ) &
      clients=($!)
      sleep 2
    fi
    fabric_counters 1 >"$out/churn-$n.fabric0"
    run "churn-$n-1" -scenario p2p -qos 1 -pairs "$pairs" -rate 2000 -duration 10s -pub-addr "$(node 1 MQTT)" -sub-addr "$(node 2 MQTT)" || true
    fabric_counters 1 >"$out/churn-$n.fabric1"
    if ((n > 0)); then
      kill "${clients[0]}" 2>/dev/null || true
      wait "${clients[0]}" 2>/dev/null || true
      clients=()
      sleep 3 # the loop's last invocation ends
    fi
  done
  checks=1
  fleet_down
  summarise churn
}

# ---- summaries ----

summarise() {
  python3 - "$out" "$1" <<'PY' | tee "$out/summary-$1.txt" >&2
import glob, json, os, re, statistics, sys
out, what = sys.argv[1], sys.argv[2]

def load(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)

def med(xs):
    return statistics.median(xs) if xs else float("nan")

FOREIGN_MAX = float(os.environ.get("FOREIGN_MAX", "0.5"))
disturbed = []

def runs(prefix, rounds=False):
    """(report's run, CPU seconds, report) of every run PREFIX-<round> that
    other processes did not disturb (with rounds: a dict by round)."""
    got = {}
    for path in glob.glob(os.path.join(out, prefix + "-*.json")):
        base = os.path.basename(path)
        m = re.search(r"-(\d+)\.json$", base)
        if base.endswith(".cpu.json") or not m:
            continue
        rep = load(base)
        cpu = load(base[:-5] + ".cpu.json")
        if cpu.get("foreign", 0) > FOREIGN_MAX:
            disturbed.append("%s (%.1f s)" % (base[:-5], cpu["foreign"]))
            continue
        got[int(m.group(1))] = (rep["runs"][0], cpu, rep)
    return got if rounds else [got[k] for k in sorted(got)]

def calls(name, cmd):
    try:
        text = open(os.path.join(out, name + ".redis")).read()
    except OSError:
        return 0
    m = re.search(r"cmdstat_%s:calls=(\d+)" % cmd, text)
    return int(m.group(1)) if m else 0

if what == "p2p":
    def order(load_):
        m = re.match(r"q(\d)(max|r(\d+))$", load_)
        if not m:
            return (1, 0, load_)
        return (-int(m.group(1)), 0 if m.group(2) == "max" else int(m.group(3)), load_)
    loads = sorted({os.path.basename(p).split("-")[1] for p in glob.glob(os.path.join(out, "p2p-*-*-*.json"))}, key=order)
    rows = {}
    for load_ in loads:
        for layout in ("same", "cross", "single"):
            rs = runs("p2p-%s-%s" % (load_, layout))
            if not rs:
                continue
            rows[(load_, layout)] = {
                "msgs_per_s": [r["delivered_per_second"] for r, _, _ in rs],
                "p50_ms": [r["p50_ms"] for r, _, _ in rs],
                "p99_ms": [r["p99_ms"] for r, _, _ in rs],
                "lost": sum(r["tally"]["lost"] for r, _, _ in rs),
                "dup": sum(r["tally"]["duplicates"] for r, _, _ in rs),
                "ooo": sum(r["tally"]["out_of_order"] for r, _, _ in rs),
                "node_us": [1e6 * sum(v for k, v in c.items() if k.startswith("node")) / max(r["tally"]["received"], 1) for r, c, _ in rs],
                "redis_us": [1e6 * c["redis"] / max(r["tally"]["received"], 1) for r, c, _ in rs],
                "busy": [c.get("busy_cpus", 0) for _, c, _ in rs],
                "foreign": [c.get("foreign", 0) for _, c, _ in rs],
            }
    print("p2p: median of the rounds [each round]; CPU per delivered message: the nodes' and Redis's; CPUs busy (of %d); CPU seconds other processes used" % os.cpu_count())
    for (load_, layout), v in rows.items():
        print("%-7s %-6s msgs/s %6.0f %-20s p50 %6.2f ms  p99 %6.2f ms %-26s lost %d dup %d ooo %d  nodes %3.0f µs redis %3.0f µs  busy %.2f  foreign %s" % (
            load_, layout, med(v["msgs_per_s"]), [round(x) for x in v["msgs_per_s"]], med(v["p50_ms"]), med(v["p99_ms"]),
            [round(x, 1) for x in v["p99_ms"]], v["lost"], v["dup"], v["ooo"], med(v["node_us"]), med(v["redis_us"]), med(v["busy"]),
            [round(x, 1) for x in v["foreign"]]))
    print("ratios: each round's cross run against its own same-node run (median [each round that neither run was disturbed in]); same-node spread against single, medians")
    for load_ in loads:
        s, c, g = rows.get((load_, "same")), rows.get((load_, "cross")), rows.get((load_, "single"))
        line = "  %-7s" % load_
        if s and c:
            sr, cr = runs("p2p-%s-same" % load_, True), runs("p2p-%s-cross" % load_, True)
            both = sorted(set(sr) & set(cr))
            tp = [cr[k][0]["delivered_per_second"] / sr[k][0]["delivered_per_second"] for k in both]
            p99 = [cr[k][0]["p99_ms"] / sr[k][0]["p99_ms"] for k in both]
            line += "  cross/same: throughput %.2f %-20s p99 %.2f %-20s" % (med(tp), [round(x, 2) for x in tp], med(p99), [round(x, 2) for x in p99])
        if s and g:
            line += "  same/single: throughput %.2f, p99 %.2f" % (med(s["msgs_per_s"]) / med(g["msgs_per_s"]), med(s["p99_ms"]) / med(g["p99_ms"]))
        print(line)
    for name in sorted(glob.glob(os.path.join(out, "p2p-q1max-*-1.redis"))):
        base = os.path.basename(name)[:-6]
        r = load(base + ".json")["runs"][0]
        n = max(r["tally"]["received"], 1)
        print("  redis calls per message in %s: evalsha %.2f (in its script: get %.2f, xadd %.2f); xread %.3f, xreadgroup %.3f, xdel %.3f, xlen %.3f, exec %.3f" % (
            base, calls(base, "evalsha") / n, calls(base, "get") / n, calls(base, "xadd") / n, calls(base, "xread") / n,
            calls(base, "xreadgroup") / n, calls(base, "xdel") / n, calls(base, "xlen") / n, calls(base, "exec") / n))

elif what == "fanout":
    for q in (0, 1):
        for layout in ("local", "spread"):
            rs = runs("fanout-q%d-%s" % (q, layout))
            if not rs:
                continue
            by = {}
            for r, _, rep in rs:
                order = rep["target"].get("sub_addrs") or []
                for a, v in (r.get("p99_ms_by_addr") or {}).items():
                    by.setdefault("node %d (%s)" % (order.index(a) + 1, a) if a in order else a, []).append(v)
            print("QoS %d %-6s copies/s %7.0f %s  p99 %6.2f ms %s  lost %d dup %d ooo %d  CPU s: nodes %.2f, redis %.2f%s" % (
                q, layout, med([r["delivered_per_second"] for r, _, _ in rs]), [round(r["delivered_per_second"]) for r, _, _ in rs],
                med([r["p99_ms"] for r, _, _ in rs]), [round(r["p99_ms"], 1) for r, _, _ in rs],
                sum(r["tally"]["lost"] for r, _, _ in rs), sum(r["tally"]["duplicates"] for r, _, _ in rs), sum(r["tally"]["out_of_order"] for r, _, _ in rs),
                med([sum(v for k, v in c.items() if k.startswith("node")) for _, c, _ in rs]), med([c["redis"] for _, c, _ in rs]),
                "".join("\n    p99 at %s %.2f ms %s" % (a, med(v), [round(x, 1) for x in v]) for a, v in sorted(by.items()))))

elif what == "churn":
    def counter(path, name):
        try:
            for line in open(os.path.join(out, path)):
                if line.startswith(name + " "):
                    return float(line.split()[1])
        except OSError:
            pass
        return 0.0
    print("p2p QoS 1, 2,000 msgs/s offered for 10 s, node 1 -> node 2, while subscriptions on node 3 come and go")
    for path in sorted(glob.glob(os.path.join(out, "churn-*-1.json")), key=lambda p: int(os.path.basename(p).split("-")[1])):
        n = os.path.basename(path).split("-")[1]
        r, cpu = load(os.path.basename(path))["runs"][0], load("churn-%s-1.cpu.json" % n)
        changes = calls("churn-%s-1" % n, "hsetnx") + calls("churn-%s-1" % n, "hdel")
        stale = counter("churn-%s.fabric1" % n, "roost_fabric_stale_routes_total") - counter("churn-%s.fabric0" % n, "roost_fabric_stale_routes_total")
        failed = counter("churn-%s.fabric1" % n, "roost_fabric_send_failures_total") - counter("churn-%s.fabric0" % n, "roost_fabric_send_failures_total")
        print("  %3s churning subscriptions: %4.0f route changes/s; sent %5d, %4.0f msgs/s, p99 %6.2f ms, lost %d; stale sends %d, refused %d; first error: %s" % (
            n, changes / cpu["wall"], r["sent"], r["delivered_per_second"], r["p99_ms"], r["tally"]["lost"], stale, failed, r.get("first_error") or "none"))

elif what == "capacity":
    held = {}
    for path in sorted(glob.glob(os.path.join(out, "capacity-*-held.json"))):
        k = int(os.path.basename(path).split("-")[1])
        state, before = load(os.path.basename(path)), load("capacity-%d-before.json" % k)
        total = dropped = failed = attempted = 0
        for c in sorted(glob.glob(os.path.join(out, "capacity-%d-client*.json" % k))):
            r = json.load(open(c))["runs"][0]
            total += r["held"]; dropped += r["dropped"]; failed += r["failures"]; attempted += r["attempted"]
        held[k] = total
        print("%d node(s): held %d of %d attempted (%d failed, %d dropped during the hold)" % (k, total, attempted, failed, dropped))
        for n in sorted(x for x in state if x.startswith("node")):
            s, b = state[n], before[n]
            per = (s["rss_kb"] - b["rss_kb"]) * 1024 / max(s["established"], 1)
            print("  %s: %d established, %d open files, RSS %.0f MiB (%.0f MiB before; %.1f KiB per connection); /readyz answered %s" % (
                n, s["established"], s["fds"], s["rss_kb"] / 1024, b["rss_kb"] / 1024, per / 1024, s.get("readyz", "?")))
        print("  redis: RSS %.0f MiB" % (state["redis"]["rss_kb"] / 1024))
    if 1 in held:
        for k in sorted(held):
            print("%d node(s) / 1 node: %.2f" % (k, held[k] / held[1]))

if disturbed:
    print("left out, as other processes used more than %.1f s of CPU during them: %s" % (FOREIGN_MAX, ", ".join(sorted(set(disturbed)))))
PY
}

[ $# -gt 0 ] || set -- all
for what in "$@"; do
  case $what in
    p2p) do_p2p ;;
    fanout) do_fanout ;;
    capacity) do_capacity ;;
    churn) do_churn ;;
    all) do_p2p; do_fanout; do_capacity; do_churn ;;
    *) die "usage: $0 [p2p|fanout|capacity|churn|all]..." ;;
  esac
done
