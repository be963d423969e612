package broker

// SessionsOf and DeliveryOf return what a hub was configured with, for a
// test that starts a second hub on the same session store.
func SessionsOf(h *Hub) SessionStore { return h.cfg.Sessions }
func DeliveryOf(h *Hub) *Delivery    { return h.cfg.Delivery }
