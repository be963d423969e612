package broker

// SetLimitsOff turns the publish quotas and metering off or on, for the
// benchmark that compares the data plane with and without them.
func SetLimitsOff(h *Hub, off bool) { h.limitsOff = off }
