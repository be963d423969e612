package pebble

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/roosthub/roost/broker/store"
)

// TestAppendWithdrawnWhenCtxEnds: an append queued behind a commit in
// progress fails with its context's error when that ends before a leader
// takes it, and leaves the queue; another queued beside it is written
// once the lead comes back.
func TestAppendWithdrawnWhenCtxEnds(t *testing.T) {
	s, err := New(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// A commit in progress: the lead is taken by nobody who will give it
	// on, until the test plays the leader. Should the test fail with
	// appends still waiting, they are answered and the lead given up, so
	// that Close does not wait for ever.
	s.wmu.Lock()
	s.leading = true
	s.wmu.Unlock()
	defer func() {
		s.wmu.Lock()
		for _, r := range s.queue {
			r.err = errors.New("the test ended")
			r.turn <- false
		}
		s.queue, s.leading = nil, false
		s.idle.Broadcast()
		s.wmu.Unlock()
		s.Close()
	}()
	item := []store.Item{{ClientID: "c", Message: store.Message{Topic: "t", Payload: []byte("m"), QoS: 1}}}

	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, "acme", item, store.Receipt{})
		gaveUp <- err
	}()
	kept := make(chan error, 1)
	go func() {
		_, err := s.Append(context.Background(), "acme", item, store.Receipt{})
		kept <- err
	}()
	queued := func(n int) bool {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		return len(s.queue) == n
	}
	for !queued(2) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-gaveUp:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the append whose context ended: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the append whose context ended still waits for the lead")
	}
	if !queued(1) {
		t.Fatal("the withdrawn append is still queued")
	}
	// The commit in progress ends: the lead goes to the one left.
	s.wmu.Lock()
	s.queue[0].turn <- true
	s.wmu.Unlock()
	select {
	case err := <-kept:
		if err != nil {
			t.Fatalf("the append left queued: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the append left queued was never written")
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.leading || len(s.queue) != 0 {
		t.Errorf("after the last append: leading %t, %d queued; want neither", s.leading, len(s.queue))
	}
}
