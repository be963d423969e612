package events_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/roosthub/roost/events"
)

// slowWriter is a database whose writes wait for release, and which
// records each batch.
type slowWriter struct {
	mu      sync.Mutex
	batches [][]events.Event
	release chan struct{}
	fail    error
}

func (w *slowWriter) AddEvents(ctx context.Context, es []events.Event) error {
	if w.release != nil {
		select {
		case <-w.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fail != nil {
		return w.fail
	}
	w.batches = append(w.batches, append([]events.Event(nil), es...))
	return nil
}

func (w *slowWriter) stored() (events, batches int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.batches {
		events += len(b)
	}
	return events, len(w.batches)
}

// TestRecorderNeverBlocks: with the database stuck, Emit returns at once;
// past the buffer the events are dropped and counted; once the database
// answers, the queued ones are written in batches, and Close writes what
// is left.
func TestRecorderNeverBlocks(t *testing.T) {
	w := &slowWriter{release: make(chan struct{})}
	r := events.NewRecorder(events.RecorderConfig{Writer: w, Buffer: 100, Batch: 30, Rate: 1_000_000})
	start := time.Now()
	for range 500 {
		r.Emit(events.Event{Tenant: "acme", Type: events.Connected})
	}
	// Stuck, a blocking Emit would never return; the bound is far above
	// any machine's scheduling delay.
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("500 Emits took %v with the database stuck", took)
	}
	// Up to one batch (30) may have left the queue for the stuck write
	// before the queue filled.
	if d := r.Dropped(); d < 370 || d > 400 {
		t.Errorf("dropped %d, want 370 to 400 (500 past a buffer of 100, a batch of 30 taken by the stuck write)", d)
	}
	close(w.release)
	r.Close()
	n, batches := w.stored()
	if int64(n) != 500-r.Dropped() || r.Written() != int64(n) {
		t.Errorf("stored %d (written %d), want %d", n, r.Written(), 500-r.Dropped())
	}
	if batches > 6 {
		t.Errorf("%d writes for %d events in batches of 30", batches, n)
	}
	r.Close() // a second Close is harmless
}

// TestRecorderBatchesWhilePausing: an event that finds the recorder idle
// is written at once, alone; the events that come during the pause after
// a write wait for the next write, and go in one batch.
func TestRecorderBatchesWhilePausing(t *testing.T) {
	w := &slowWriter{}
	r := events.NewRecorder(events.RecorderConfig{Writer: w, Rate: 1_000_000, Pause: time.Hour})
	r.Emit(events.Event{Tenant: "acme", Type: events.Connected})
	// Paused before its first write, the recorder would hold the event
	// for an hour; the bound is far above any machine's scheduling delay.
	for deadline := time.Now().Add(10 * time.Second); r.Written() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a lone event not written within 10s")
		}
	}
	for range 10 {
		r.Emit(events.Event{Tenant: "acme", Type: events.Disconnected})
	}
	r.Close() // ends the pause: what is queued is written
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.batches) != 2 || len(w.batches[0]) != 1 || len(w.batches[1]) != 10 {
		sizes := []int{}
		for _, b := range w.batches {
			sizes = append(sizes, len(b))
		}
		t.Errorf("batches of %v, want [1 10]", sizes)
	}
}

// TestRecorderNoPauseWhileBehind: after a full batch the recorder writes
// on without its pause: more is likely queued.
func TestRecorderNoPauseWhileBehind(t *testing.T) {
	w := &slowWriter{}
	r := events.NewRecorder(events.RecorderConfig{Writer: w, Rate: 1_000_000, Batch: 1, Pause: time.Hour})
	defer r.Close()
	for range 5 {
		r.Emit(events.Event{Tenant: "acme", Type: events.Connected})
	}
	// Paused after each full batch, the recorder would take hours.
	for deadline := time.Now().Add(10 * time.Second); r.Written() < 5; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("written %d of 5 events in batches of 1 within 10s", r.Written())
		}
	}
}

// TestRecorderFailure: a batch the database refuses twice is counted as
// failed, not retried forever; the metric says so.
func TestRecorderFailure(t *testing.T) {
	w := &slowWriter{fail: errors.New("database down")}
	r := events.NewRecorder(events.RecorderConfig{Writer: w})
	r.Emit(events.Event{Tenant: "acme", Type: events.Connected})
	r.Close()
	if r.Failed() != 1 || r.Written() != 0 {
		t.Errorf("failed %d, written %d; want 1, 0", r.Failed(), r.Written())
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(r.Collector())
	want := `
# HELP roost_events_stored_total Lifecycle events stored for their tenant's history (written), dropped because the write queue was full (dropped) or their tenant was past its rate (limited), or refused by the database (failed).
# TYPE roost_events_stored_total counter
roost_events_stored_total{outcome="dropped"} 0
roost_events_stored_total{outcome="failed"} 1
roost_events_stored_total{outcome="limited"} 0
roost_events_stored_total{outcome="written"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "roost_events_stored_total"); err != nil {
		t.Error(err)
	}
}

// TestRecorderRatePerTenant: a tenant flooding events gets its burst (ten
// seconds' worth) and then its rate; another tenant is untouched.
func TestRecorderRatePerTenant(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	w := &slowWriter{}
	r := events.NewRecorder(events.RecorderConfig{Writer: w, Rate: 10, Now: clock})
	for range 150 {
		r.Emit(events.Event{Tenant: "flood", Type: events.AuthFailed})
	}
	for range 20 {
		r.Emit(events.Event{Tenant: "calm", Type: events.Connected})
	}
	if r.Limited() != 50 {
		t.Errorf("limited %d, want 50 (150 past a burst of 100)", r.Limited())
	}
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	for range 15 {
		r.Emit(events.Event{Tenant: "flood", Type: events.AuthFailed})
	}
	if r.Limited() != 55 {
		t.Errorf("limited %d after a second, want 55 (10 more allowed)", r.Limited())
	}
	r.Close()
	per := map[string]int{}
	for _, b := range w.batches {
		for _, e := range b {
			per[e.Tenant]++
		}
	}
	if per["flood"] != 110 || per["calm"] != 20 {
		t.Errorf("stored %v, want flood 110, calm 20", per)
	}
}

// BenchmarkRecorderEmit is what storing events costs the connection that
// raises one: a rate check and a channel send (the write happens
// elsewhere).
func BenchmarkRecorderEmit(b *testing.B) {
	w := &slowWriter{}
	r := events.NewRecorder(events.RecorderConfig{Writer: w, Rate: 1 << 30, Buffer: 1 << 20})
	defer r.Close()
	e := events.Event{Tenant: "acme", Type: events.Connected, Device: "d1", ClientID: "d1"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.Emit(e)
		}
	})
}
