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
