#!/usr/bin/env bash
# Compares roost binaries A/B on one machine, the way docs/benchmarks.md's
# before/after tables were measured: each binary in turn is started alone,
# pinned to CPU 0, with a tenant set up as roost-bench's suite sets up its
# own (enterprise plan, rates lifted, one device with any client id), and
# loaded from CPU 1 by roost-bench; three rounds, the binaries in the order
# given in each. Whole invocations of `make bench-quick` vary more than most
# changes being judged; alternating the binaries lands a drift of the
# machine in all of them.
#
#   scripts/bench-ab.sh <roost-bench> <label>=<roost binary> ...
#   e.g. scripts/bench-ab.sh bin/roost-bench before=/tmp/roost-old after=bin/roost
#
# Per binary and round it prints connects/s (500 clients, median of 5
# runs), p2p QoS 1 msgs/s (8 pairs as fast as they go, median of 3 runs of
# 3 s) and the server's CPU time per delivered message over a p2p QoS 1 run
# at a fixed offered rate (10,000 msgs/s for 6 s; CPU from /proc/<pid>/stat),
# the steadiest of the three on a shared machine. Needs taskset, curl, jq and
# python3, and two CPUs.
set -euo pipefail

bench=${1:?usage: scripts/bench-ab.sh <roost-bench> <label>=<roost binary> ...}
shift
[ $# -ge 1 ] || { echo "usage: scripts/bench-ab.sh <roost-bench> <label>=<roost binary> ..." >&2; exit 2; }

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

for round in 1 2 3; do
	for spec in "$@"; do
		label=${spec%%=*} bin=${spec#*=}
		dir=$(mktemp -d)
		mqtt=127.0.0.1:$(free_port) http=127.0.0.1:$(free_port)
		admin=rop_bench-ab-operator-token
		ROOST_DATA_DIR=$dir ROOST_MQTT_ADDR=$mqtt ROOST_HTTP_ADDR=$http ROOST_ADMIN_TOKEN=$admin \
			ROOST_MAX_FREE_TENANTS=0 ROOST_TENANTS_PER_DAY=0 taskset -c 0 "$bin" serve >"$dir/log" 2>&1 &
		pid=$!
		for _ in $(seq 200); do curl -sf "http://$http/readyz" >/dev/null && break; sleep 0.1; done
		json=(-H 'Content-Type: application/json')
		token=$(curl -sf "${json[@]}" -d '{"email":"ab@example.com","password":"correct horse battery"}' "http://$http/v1/signup" | jq -er .token)
		curl -sf "${json[@]}" -H "Authorization: Bearer $token" -d '{"slug":"bench"}' "http://$http/v1/tenants" >/dev/null
		secret=$(curl -sf "${json[@]}" -H "Authorization: Bearer $token" -d '{"name":"bench","client_ids":"any"}' \
			"http://$http/v1/tenants/bench/devices" | jq -er .secret)
		u=1099511627776
		curl -sf -X PATCH "${json[@]}" -H "Authorization: Bearer $admin" \
			-d "{\"plan\":\"enterprise\",\"quotas\":{\"publish_rate\":$u,\"tenant_publish_rate\":$u,\"connect_rate\":$u,\"max_connections\":$u,\"bandwidth_in\":$u,\"bandwidth_out\":$u,\"messages_per_month\":$u,\"max_subscriptions\":$u}}" \
			"http://$http/v1/admin/tenants/bench" >/dev/null
		sleep 0.5
		load=(taskset -c 1 "$bench" -addr "$mqtt" -username bench/bench -password "$secret")
		conn=$("${load[@]}" -scenario conn -n 500 -runs 5 -client-prefix "c$round-" 2>&1 | grep -o 'median [0-9]*' | head -1)
		p2p=$("${load[@]}" -scenario p2p -qos 1 -duration 3s -runs 3 -client-prefix "p$round-" 2>&1 | grep -o 'median [0-9]*' | head -1)
		before=$(cpu_ticks "$pid")
		rated=$("${load[@]}" -scenario p2p -qos 1 -rate 10000 -duration 6s -runs 1 -client-prefix "r$round-" 2>&1 | grep -o 'median [0-9]*' | head -1)
		ticks=$(($(cpu_ticks "$pid") - before))
		delivered=${rated#median }
		hz=$(getconf CLK_TCK)
		us=$(python3 -c "print(round($ticks / $hz * 1e6 / ($delivered * 6), 1))" 2>/dev/null || echo "?")
		echo "round $round $label: connects/s ${conn#median }, p2p QoS 1 msgs/s ${p2p#median }, server CPU µs per message at a fixed rate $us"
		kill "$pid"
		wait "$pid" 2>/dev/null || true
		rm -rf "$dir"
	done
done
