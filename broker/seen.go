package broker

import (
	"context"
	"time"
)

// touch notes that a device was seen. Notes are written to the directory
// once a second by flushSeen, a device's latest only, so a storm of
// connects costs one write per device per second, not one per connect.
func (h *Hub) touch(tenant, device string, at time.Time) {
	h.seenMu.Lock()
	h.seen[deviceKey{tenant, device}] = at
	h.seenMu.Unlock()
}

func (h *Hub) flushSeen() {
	h.seenMu.Lock()
	batch := h.seen
	h.seen = map[deviceKey]time.Time{}
	h.seenMu.Unlock()
	for k, at := range batch {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := h.dir.dir.TouchDevice(ctx, k.tenant, k.name, at)
		cancel()
		if err != nil {
			h.log.Warn("record last seen", "tenant", k.tenant, "device", k.name, "err", err)
		}
	}
}
