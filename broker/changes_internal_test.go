package broker

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// TestRetryQueueBounded: a change that keeps failing waits twice as long
// each time, up to a minute, and holds one place in the queue however often
// it fails; past maxRetries distinct changes the queue becomes one resync.
func TestRetryQueueBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	a := newChangeApplier(Config{Now: func() time.Time { return now }, Log: discardLog()}, nil, nil)
	c := tenants.Change{Kind: tenants.DeviceChanged, Tenant: "acme", Device: "d1"}
	var waits []time.Duration
	for range 8 {
		waits = append(waits, a.later(c, firstRetry))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute, time.Minute}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Errorf("waits %v, want %v", waits, want)
	}
	if n := a.backlog(); n != 1 {
		t.Errorf("one change failing 8 times takes %d places, want 1", n)
	}
	if got := a.due(); len(got) != 0 {
		t.Errorf("due before its time: %v", got)
	}
	now = now.Add(time.Minute)
	if got := a.due(); len(got) != 1 || got[0] != c {
		t.Errorf("due after a minute: %v, want %v", got, c)
	}
	if got := a.due(); len(got) != 0 {
		t.Errorf("handed out twice while being tried: %v", got)
	}

	for i := range maxRetries {
		a.later(tenants.Change{Kind: tenants.DeviceChanged, Tenant: "acme", Device: fmt.Sprint("x", i)}, 0)
	}
	if n := a.backlog(); n != 1 {
		t.Fatalf("past the bound the queue holds %d changes, want the one resync", n)
	}
	now = now.Add(firstRetry)
	if got := a.due(); len(got) != 1 || got[0].Kind != tenants.Resync {
		t.Errorf("past the bound: %v, want one resync after a second", got)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
