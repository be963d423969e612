package broker

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestOriginRoundTrip: what a queued message's properties say of its
// origin (its id, device and client id) comes back as written, up to the
// longest strings MQTT allows.
func TestOriginRoundTrip(t *testing.T) {
	o := &outbox{idPrefix: "a1b2c3"}
	long := strings.Repeat("d", 65535)
	for _, tc := range []struct {
		n                uint64
		device, clientID string
		id               string
	}{
		{1, "sensor-1", "c1", "a1b2c3-1"},
		{36, "", "", "a1b2c3-10"},
		{1<<64 - 1, long, long, "a1b2c3-3w5e11264sgsf"},
	} {
		b := o.encodeOrigin(tc.n, tc.device, tc.clientID)
		id, device, clientID, ok := decodeOrigin(b)
		if !ok || id != tc.id || device != tc.device || clientID != tc.clientID {
			t.Errorf("origin %d: got %q, %d bytes, %d bytes (ok %t); want %q, %d, %d", tc.n, id, len(device), len(clientID), ok, tc.id, len(tc.device), len(tc.clientID))
		}
		// Cut short, or of another version, it is refused, not misread.
		for _, cut := range []int{0, 1, 2, len(b) / 2, len(b) - 1} {
			if _, _, _, ok := decodeOrigin(b[:cut]); ok {
				t.Errorf("origin %d cut to %d of %d bytes was read", tc.n, cut, len(b))
			}
		}
		if _, _, _, ok := decodeOrigin(append([]byte{2}, b[1:]...)); ok {
			t.Errorf("origin %d of version 2 was read", tc.n)
		}
	}
}

// TestStoreCtxShared: store calls share a context while it has more than
// storeTimeout less a second to run, and its cancel leaves it running.
func TestStoreCtxShared(t *testing.T) {
	storeDeadline.Store(nil) // a context made now, not by an earlier test
	a, cancel := storeCtx()
	cancel()
	if err := a.Err(); err != nil {
		t.Fatalf("the shared context ended at a call's cancel: %v", err)
	}
	deadline, ok := a.Deadline()
	// (A second of slack: a loaded machine may pause the test.)
	if left := time.Until(deadline); !ok || left <= storeTimeout-time.Second || left > storeTimeout {
		t.Fatalf("deadline %v away (set %t), want at most %v", left, ok, storeTimeout)
	}
	// Once the shared context is older than a second, the next call
	// gets a new one.
	d := storeDeadline.Load()
	storeDeadline.Store(&sharedDeadline{ctx: d.ctx, cancel: d.cancel, handOutUntil: time.Now().Add(-time.Nanosecond)})
	b, cancel := storeCtx()
	defer cancel()
	if b == a {
		t.Fatal("a context past its hand-out second was handed out again")
	}
	// Nor is one that has ended, whatever its hand-out time says (as
	// after a step back of the wall clock, were it compared on that).
	ended, end := context.WithCancel(context.Background())
	end()
	storeDeadline.Store(&sharedDeadline{ctx: ended, cancel: end, handOutUntil: time.Now().Add(time.Hour)})
	if c, cancel := storeCtx(); c.Err() != nil {
		cancel()
		t.Fatal("an ended context was handed out")
	}
}
