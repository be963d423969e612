package broker

// A node's device connections are bounded below its open-file limit, so
// that a node full of devices keeps descriptors for the rest of its work:
// its health and API listeners, Redis, Postgres, the session store, the
// connections it forwards to other nodes. Without the bound, a node at
// its limit could accept nothing at all — not its orchestrator's health
// probe, not its own store's files — and its MQTT listener would only log
// EMFILE. Past the bound a connection is closed as it is accepted (a TCP
// reset, before a byte of it is read), counted in
// roost_handshakes_dropped_total{reason="refused_node_full"} and logged in
// the handshake bounds' summary line; the device connects again, to
// another node behind the balancer.

// nodeLimitReserve is the share of the open-file limit kept for the rest
// (a tenth), and its least and most.
const (
	nodeLimitReserveMin = 64
	nodeLimitReserveMax = 2_048
)

// defaultNodeConnections is the bound for an open-file limit: the limit
// less the reserve; 0 (no bound) if the limit is unknown or too small to
// leave a reserve.
func defaultNodeConnections(openFiles uint64) int {
	if openFiles == 0 {
		return 0
	}
	reserve := min(max(openFiles/10, nodeLimitReserveMin), nodeLimitReserveMax)
	if openFiles <= 2*reserve {
		return 0
	}
	return int(min(openFiles-reserve, 1<<30))
}
