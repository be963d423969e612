package broker

// EndpointHandshakes is the number of connections in handshake counted
// against a tenant's endpoint.
func EndpointHandshakes(h *Hub, tenant string) int {
	h.in.hs.mu.Lock()
	defer h.in.hs.mu.Unlock()
	if ep := h.in.hs.endpoints[tenant]; ep != nil {
		return ep.n
	}
	return 0
}

// SourceHandshakes is the number of connections in handshake counted
// against a source address (once any PROXY header is read).
func SourceHandshakes(h *Hub, addr string) int {
	h.in.hs.mu.Lock()
	defer h.in.hs.mu.Unlock()
	return h.in.hs.all.count(addr)
}
