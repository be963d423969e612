package group

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestWithdrawnWhenCtxEnds: a value queued behind a call in progress
// fails with its context's error when that ends before a leader takes
// it, and leaves the queue; another queued beside it is committed once
// the lead comes back.
func TestWithdrawnWhenCtxEnds(t *testing.T) {
	var c Commit[string]
	// A call in progress: the lead is taken by nobody who will give it
	// on, until the test plays the leader. Should the test fail with
	// values still waiting, they are answered and the lead given up.
	c.mu.Lock()
	c.leading = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for _, w := range c.queue {
			w.turn <- false
		}
		c.queue, c.leading = nil, false
		c.mu.Unlock()
	}()
	var mu sync.Mutex
	var committed []string
	commit := func(vs []string) {
		mu.Lock()
		defer mu.Unlock()
		committed = append(committed, vs...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() { gaveUp <- c.Do(ctx, "withdrawn", commit) }()
	queued := func(n int) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.queue) == n
	}
	for !queued(1) {
		time.Sleep(time.Millisecond)
	}
	kept := make(chan error, 1)
	go func() { kept <- c.Do(context.Background(), "kept", commit) }()
	for !queued(2) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-gaveUp:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the value whose context ended: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the value whose context ended still waits for the lead")
	}
	if !queued(1) {
		t.Fatal("the withdrawn value is still queued")
	}
	// The call in progress ends: the lead goes to the one left.
	c.mu.Lock()
	c.queue[0].turn <- true
	c.mu.Unlock()
	select {
	case err := <-kept:
		if err != nil {
			t.Fatalf("the value left queued: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the value left queued was never committed")
	}
	mu.Lock()
	if !slices.Equal(committed, []string{"kept"}) {
		t.Errorf("committed %q, want only the value left queued", committed)
	}
	mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leading || len(c.queue) != 0 {
		t.Errorf("after the last value: leading %t, %d queued; want neither", c.leading, len(c.queue))
	}
}

// TestGroups: values given while a call is in progress are committed
// together in the next call, in the order they came, at most Max at a
// time; every value is committed once; after Shut, Do fails.
func TestGroups(t *testing.T) {
	c := Commit[int]{Max: 4}
	release := make(chan struct{})
	var mu sync.Mutex
	var calls [][]int
	commit := func(vs []int) {
		if vs[0] == 0 {
			<-release // the first call is held while the others queue
		}
		mu.Lock()
		calls = append(calls, slices.Clone(vs))
		mu.Unlock()
	}
	done := make(chan error, 11)
	go func() { done <- c.Do(context.Background(), 0, commit) }()
	for {
		c.mu.Lock()
		leading := c.leading
		c.mu.Unlock()
		if leading {
			break
		}
		time.Sleep(time.Millisecond)
	}
	for i := 1; i <= 10; i++ {
		go func() { done <- c.Do(context.Background(), i, commit) }()
		for { // each queued before the next, so that the order is known
			c.mu.Lock()
			n := len(c.queue)
			c.mu.Unlock()
			if n == i {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	close(release)
	for range 11 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	want := [][]int{{0}, {1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10}}
	mu.Lock()
	if !slices.EqualFunc(calls, want, slices.Equal) {
		t.Errorf("calls %v, want %v", calls, want)
	}
	mu.Unlock()
	c.Shut()
	if err := c.Do(context.Background(), 11, commit); !errors.Is(err, ErrShut) {
		t.Errorf("Do after Shut: %v, want ErrShut", err)
	}
}

// TestSplitHandsOnBeforeWait: with DoSplit the lead passes on once a
// group's commit returns, before its wait: the next group is committed
// while the first still waits, its caller returns only once its own wait
// ends, and Shut waits for every wait.
func TestSplitHandsOnBeforeWait(t *testing.T) {
	var c Commit[string]
	release := make(chan struct{})
	var mu sync.Mutex
	var committed []string
	commit := func(vs []string) func() {
		mu.Lock()
		committed = append(committed, vs...)
		mu.Unlock()
		if vs[0] == "first" {
			return func() { <-release }
		}
		return nil
	}
	first := make(chan error, 1)
	go func() { first <- c.DoSplit(context.Background(), "first", commit) }()
	for !slices.Contains(snapshot(&mu, &committed), "first") {
		time.Sleep(time.Millisecond)
	}
	// The first group waits; the next is committed meanwhile.
	second := make(chan error, 1)
	go func() { second <- c.DoSplit(context.Background(), "second", commit) }()
	select {
	case err := <-second:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second group waited for the first group's wait")
	}
	select {
	case <-first:
		t.Fatal("the first caller returned before its wait ended")
	default:
	}
	shut := make(chan struct{})
	go func() { c.Shut(); close(shut) }()
	select {
	case <-shut:
		t.Fatal("Shut returned with a wait in progress")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	<-shut
	if got := snapshot(&mu, &committed); !slices.Equal(got, []string{"first", "second"}) {
		t.Errorf("committed %v, want [first second]", got)
	}
	if err := c.DoSplit(context.Background(), "late", commit); !errors.Is(err, ErrShut) {
		t.Errorf("after Shut: %v, want ErrShut", err)
	}
}

func snapshot(mu *sync.Mutex, s *[]string) []string {
	mu.Lock()
	defer mu.Unlock()
	return slices.Clone(*s)
}
