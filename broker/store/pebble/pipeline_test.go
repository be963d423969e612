package pebble

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/roosthub/roost/broker/store"
)

// TestAppendAfter: appends queued one after the other with AppendAfter,
// each while the ones before it are being made, are numbered in the order
// queued, whatever commit each lands in; one following an append that
// failed fails without being written, and so does the one following it,
// while an append following none is written.
func TestAppendAfter(t *testing.T) {
	s, err := New(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	item := func(n int) []store.Item {
		return []store.Item{{ClientID: "c", Message: store.Message{Topic: "t", Payload: fmt.Appendf(nil, "%d", n)}}}
	}
	var prev store.Pending
	var all []store.Pending
	for i := range 200 {
		p, err := s.AppendAfter(ctx, "acme", item(i), prev)
		if err != nil {
			t.Fatal(err)
		}
		all, prev = append(all, p), p
	}
	for i, p := range all {
		seqs, err := p.Wait()
		if err != nil || len(seqs) != 1 || seqs[0] != uint64(i+1) {
			t.Fatalf("append %d: seqs %v, err %v; want [%d]", i, seqs, err, i+1)
		}
	}

	// An append that failed (as a failed commit leaves it).
	failed := &appendReq{err: errors.New("disk failed"), done: make(chan struct{})}
	close(failed.done)
	next, err := s.AppendAfter(ctx, "acme", item(1000), pending{failed})
	if err != nil {
		t.Fatal(err)
	}
	after, err := s.AppendAfter(ctx, "acme", item(1001), next)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := next.Wait(); err == nil {
		t.Error("an append following a failed one was written")
	}
	if _, err := after.Wait(); err == nil {
		t.Error("an append following one not written was written")
	}
	alone, err := s.AppendAfter(ctx, "acme", item(1002), nil)
	if err != nil {
		t.Fatal(err)
	}
	if seqs, err := alone.Wait(); err != nil || len(seqs) != 1 || seqs[0] != 201 {
		t.Errorf("an append following none: seqs %v, err %v; want [201]", seqs, err)
	}
	q, err := s.Read(ctx, "acme", "c", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(q) != 201 || string(q[200].Payload) != "1002" {
		t.Errorf("the queue holds %d messages (last %q), want 201 ending with 1002", len(q), q[len(q)-1].Payload)
	}
}
