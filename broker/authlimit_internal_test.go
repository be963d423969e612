package broker

import (
	"fmt"
	"testing"
	"time"
)

// TestAuthLimitStreaks: each streak has its free failures, then doubling
// delays up to the bound; a success ends only its pair's streak; an hour
// without failures forgives a streak.
func TestAuthLimitStreaks(t *testing.T) {
	clock := time.Unix(1_700_000_000, 0)
	a := newAuthLimit(func() time.Time { return clock })
	delays := func(n int, username, source string) []time.Duration {
		var out []time.Duration
		for range n {
			d, _ := a.fail(username, source)
			out = append(out, d)
		}
		return out
	}
	got := delays(13, "acme/d1", "192.0.2.1")
	for i, d := range got {
		want := time.Duration(0)
		if i >= authFreePerPair {
			want = time.Second << (i - authFreePerPair)
		}
		if d != want {
			t.Errorf("failure %d of a pair: delay %v, want %v", i+1, d, want)
		}
	}
	if d, first := a.fail("acme/d2", "192.0.2.1"); d != 0 || first {
		t.Errorf("another username from the address: delay %v (first %v), want none", d, first)
	}
	a.succeeded("acme/d1", "192.0.2.1")
	if d, _ := a.fail("acme/d1", "192.0.2.1"); d != 0 {
		t.Errorf("after a success: delay %v, want none", d)
	}
	// The address's streak (15 so far) outlives that success.
	for i := range authFreePerAddress - 15 {
		a.fail(fmt.Sprintf("acme/x%d", i), "192.0.2.1")
	}
	if d, first := a.fail("acme/y", "192.0.2.1"); d != time.Second || !first {
		t.Errorf("failure %d from the address: delay %v (first %v), want 1s, first", authFreePerAddress+1, d, first)
	}
	clock = clock.Add(authForgiveAfter)
	if d, _ := a.fail("acme/z", "192.0.2.1"); d != 0 {
		t.Errorf("after a quiet hour: delay %v, want none", d)
	}
	// The delay stops doubling at its bound.
	for range 40 {
		a.fail("acme/d9", "192.0.2.9")
	}
	if d, _ := a.fail("acme/d9", "192.0.2.9"); d != authMaxDelay {
		t.Errorf("a long streak: delay %v, want %v", d, authMaxDelay)
	}
}
