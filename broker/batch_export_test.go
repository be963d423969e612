package broker

import "sync/atomic"

// SocketWrites is the number of socket writes made to the device's live
// connections of a tenant; -1 if the tenant's broker is not running.
func SocketWrites(h *Hub, tenant, device string) int64 {
	inst := h.reg.running(tenant)
	if inst == nil {
		return -1
	}
	var n int64
	for dc := range inst.live.conns(func(dc *deviceConn) bool { return dc.id.device == device }) {
		n += dc.batch.writes.Load()
	}
	return n
}

// SetWriteBatching turns write batching on or off for the whole process;
// it returns the setting it replaced.
func SetWriteBatching(on bool) bool { return writeBatching.Swap(on) }

// Dropped is the number of messages the tenant's broker dropped for a
// client whose write queue was full.
func Dropped(h *Hub, tenant string) int64 {
	inst := h.reg.running(tenant)
	if inst == nil {
		return -1
	}
	return atomic.LoadInt64(&inst.server.Info.MessagesDropped)
}
