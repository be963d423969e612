package events_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/events"
)

// TestBillingTopics: billing's events have a topic under $events/billing
// named by their type, with or without a device; a device event without
// a device has none.
func TestBillingTopics(t *testing.T) {
	for _, tc := range []struct {
		e    events.Event
		want string
	}{
		{events.Event{Type: events.PlanChanged}, "$events/billing/plan_changed"},
		{events.Event{Type: events.PaymentFailed}, "$events/billing/payment_failed"},
		{events.Event{Type: events.PaymentSucceeded}, "$events/billing/payment_succeeded"},
		{events.Event{Type: events.BillingSuspended}, "$events/billing/billing_suspended"},
		{events.Event{Type: events.BillingResumed}, "$events/billing/billing_resumed"},
		{events.Event{Type: events.SpendWarning, Device: "d1"}, "$events/billing/spend_warning"},
		{events.Event{Type: events.Connected}, ""},
		{events.Event{Type: events.ShadowUpdated, Device: "d1"}, ""},
	} {
		if got := tc.e.Topic(); got != tc.want {
			t.Errorf("%s: topic %q, want %q", tc.e.Type, got, tc.want)
		}
	}
}

// TestRelay: the relay hands on the events that have a topic, in order,
// and no other; Emit never waits for a stuck publisher (a full queue
// drops and counts); a publish failing once is tried again, one failing
// every time is counted; Close is harmless twice.
func TestRelay(t *testing.T) {
	var mu sync.Mutex
	var got []string
	tries := map[string]int{}
	release := make(chan struct{})
	fail := errors.New("node down")
	r := events.NewRelay(func(ctx context.Context, e events.Event) error {
		if e.Reason == "stuck" {
			<-release
		}
		mu.Lock()
		tries[e.Reason]++
		n := tries[e.Reason]
		mu.Unlock()
		if e.Reason == "fail" || e.Reason == "once" && n == 1 {
			return fail
		}
		mu.Lock()
		got = append(got, e.Type)
		mu.Unlock()
		return nil
	}, nil)
	defer r.Close()
	r.Emit(events.Event{Tenant: "acme", Type: events.Connected}) // no device: no topic
	r.Emit(events.Event{Tenant: "acme", Type: events.PlanChanged})
	r.Emit(events.Event{Tenant: "acme", Type: events.PaymentFailed, Reason: "fail"})
	r.Emit(events.Event{Tenant: "acme", Type: events.PaymentSucceeded, Reason: "once"})
	wait := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: relayed %d, dropped %d", what, r.Relayed(), r.Dropped())
			}
		}
	}
	wait("two relayed, one failed", func() bool { return r.Relayed() == 2 && r.Dropped() == 1 })
	mu.Lock()
	if len(got) != 2 || got[0] != events.PlanChanged || got[1] != events.PaymentSucceeded {
		t.Errorf("relayed %v, want plan_changed then payment_succeeded", got)
	}
	if tries["fail"] != 3 || tries["once"] != 2 {
		t.Errorf("tries: %v, want 3 of the failing one and 2 of the one failing once", tries)
	}
	mu.Unlock()

	// Stuck: the publisher holds one of acme's, its shard's queue takes
	// 128, the rest drop; another tenant's, on another shard, go through.
	start := time.Now()
	for range 1200 {
		r.Emit(events.Event{Tenant: "acme", Type: events.SpendWarning, Reason: "stuck"})
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("1,200 emits to a stuck publisher took %v", took)
	}
	wait("the overflow dropped", func() bool { return r.Dropped() >= 1+1200-129 })
	other := ""
	for i := 0; other == ""; i++ {
		if name := fmt.Sprint("other", i); events.RelayShard(name) != events.RelayShard("acme") {
			other = name
		}
	}
	relayed := r.Relayed()
	r.Emit(events.Event{Tenant: other, Type: events.PlanChanged})
	wait("another tenant's event relayed while acme's are stuck", func() bool { return r.Relayed() == relayed+1 })
	close(release)
	wait("the queue drained", func() bool { return r.Relayed()+r.Dropped() == 2+1+1200+1 })
	r.Close()
	r.Close()
}
