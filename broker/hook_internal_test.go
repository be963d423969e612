package broker

import (
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// TestHookSet: a hook provides exactly the events in its set.
func TestHookSet(t *testing.T) {
	s := provides(mqtt.OnPublish, mqtt.OnConnect, 63)
	for _, e := range []byte{mqtt.OnPublish, mqtt.OnConnect, 63} {
		if !s.has(e) {
			t.Errorf("event %d missing", e)
		}
	}
	for _, e := range []byte{mqtt.OnPublished, mqtt.OnDisconnect, 0, 64, 200} {
		if s.has(e) {
			t.Errorf("event %d provided", e)
		}
	}
	if !(&quotaHook{}).Provides(mqtt.OnPublish) || (&quotaHook{}).Provides(mqtt.OnWill) {
		t.Error("the quota hook's set")
	}
}

// TestOneEncodeHook: of a tenant's hooks only encodeHook provides
// OnPacketEncode (mochi copies the packet into and out of each that
// does), and it has every concern's encode method to call.
func TestOneEncodeHook(t *testing.T) {
	for _, spread := range []bool{false, true} {
		inst := &instance{persist: &persistence{}, spread: spread}
		var enc *encodeHook
		for _, h := range tenantHooks(inst) {
			if e, ok := h.(*encodeHook); ok {
				enc = e
			} else if h.Provides(mqtt.OnPacketEncode) {
				t.Errorf("%s provides OnPacketEncode beside the encode hook", h.ID())
			}
		}
		if enc == nil || !enc.Provides(mqtt.OnPacketEncode) {
			t.Fatal("no hook provides OnPacketEncode")
		}
		if enc.protocol == nil || enc.access == nil || enc.session == nil || enc.quota == nil || (enc.route != nil) != spread {
			t.Errorf("spread %t: the encode hook calls protocol %t, access %t, session %t, quota %t, route %t", spread,
				enc.protocol != nil, enc.access != nil, enc.session != nil, enc.quota != nil, enc.route != nil)
		}
	}
}
