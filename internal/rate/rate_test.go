package rate

import (
	"testing"
	"time"
)

func TestAllowRefillsAtRate(t *testing.T) {
	var b Bucket
	now := time.Unix(1000, 0)
	for i := range 10 {
		if !b.Allow(now, 1, 10, 10) {
			t.Fatalf("take %d of a burst of 10 refused", i+1)
		}
	}
	if b.Allow(now, 1, 10, 10) {
		t.Fatal("an eleventh take within the same instant was allowed")
	}
	now = now.Add(250 * time.Millisecond) // 2.5 tokens earned
	for i := range 2 {
		if !b.Allow(now, 1, 10, 10) {
			t.Fatalf("take %d after 250ms refused", i+1)
		}
	}
	if b.Allow(now, 1, 10, 10) {
		t.Fatal("a third take after 250ms at 10/s was allowed")
	}
	now = now.Add(time.Hour)
	n := 0
	for b.Allow(now, 1, 10, 10) {
		n++
	}
	if n != 10 {
		t.Errorf("after an hour %d tokens, want the burst of 10", n)
	}
}

func TestRateChangeTakesEffect(t *testing.T) {
	var b Bucket
	now := time.Unix(1000, 0)
	for b.Allow(now, 1, 5, 5) {
	}
	// Raised live: the bucket starts full at the new burst.
	n := 0
	for b.Allow(now, 1, 100, 100) {
		n++
	}
	if n != 100 {
		t.Errorf("after raising the limit %d tokens, want 100", n)
	}
	if !b.Allow(now, 1, 0, 0) {
		t.Error("a rate of 0 (no limit) refused")
	}
}

func TestReserveThrottles(t *testing.T) {
	var b Bucket
	now := time.Unix(1000, 0)
	if d := b.Reserve(now, 1000, 1000, 1000); d != 0 {
		t.Errorf("within the burst: wait %v", d)
	}
	if d := b.Reserve(now, 500, 1000, 1000); d != 500*time.Millisecond {
		t.Errorf("500 bytes over at 1000/s: wait %v, want 500ms", d)
	}
	now = now.Add(500 * time.Millisecond)
	if d := b.Reserve(now, 100, 1000, 1000); d != 100*time.Millisecond {
		t.Errorf("debt repaid, 100 more: wait %v, want 100ms", d)
	}
}
