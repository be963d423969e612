package broker

// MaxDurableWrites is how many outbox writes one connection may have
// queued or in flight before its reader waits.
const MaxDurableWrites = maxDurable

// Committers is the number of connections' outbox committers running in
// the process.
func Committers() int64 { return committers.Load() }

// SetDurableBehind turns the queued outbox writes of QoS 1 publishes on or
// off (off: the reader waits for each); it returns the setting it
// replaced.
func SetDurableBehind(on bool) bool { return durableBehind.Swap(on) }

// HeldBytes is the most bytes held behind outbox writes on a device's
// live connections of a tenant; -1 if the tenant's broker is not running.
func HeldBytes(h *Hub, tenant, device string) int {
	inst := h.reg.running(tenant)
	if inst == nil {
		return -1
	}
	n := 0
	for dc := range inst.live.conns(func(dc *deviceConn) bool { return dc.id.device == device }) {
		dc.batch.mu.Lock()
		n = max(n, len(dc.batch.d.held))
		dc.batch.mu.Unlock()
	}
	return n
}

// HeldLimit is the most bytes held behind a connection's outbox writes.
const HeldLimit = heldLimit

// SetServing makes the running broker of a tenant see its node's lease as
// held or not, as its durable writes check it.
func SetServing(h *Hub, tenant string, serving func() bool) bool {
	inst := h.reg.running(tenant)
	if inst == nil || inst.out == nil {
		return false
	}
	inst.out.serving = serving
	return true
}

// MaxDurableBytes is the most payload one connection's queued outbox
// writes carry before its reader waits.
const MaxDurableBytes = maxDurableBytes
