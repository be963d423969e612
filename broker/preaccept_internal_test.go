package broker

import (
	"fmt"
	"testing"
	"time"
)

// TestAttemptRateBucket: a burst, then one attempt per 1/rate; a token
// given back by an admitted attempt, never past the burst.
func TestAttemptRateBucket(t *testing.T) {
	r := newAttemptRate(2, 3)
	now := time.Unix(1_700_000_000, 0)
	var got []bool
	for range 4 {
		got = append(got, r.take("a", now))
	}
	now = now.Add(500 * time.Millisecond)
	got = append(got, r.take("a", now), r.take("a", now))
	r.give("a", now)
	got = append(got, r.take("a", now), r.take("a", now))
	for range 10 {
		r.give("b", now) // never charged: nothing to give back
	}
	got = append(got, r.take("b", now), r.take("b", now), r.take("b", now), r.take("b", now))
	want := []bool{true, true, true, false, true, false, true, false, true, true, true, false}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if newAttemptRate(0, 10) != nil || !(*attemptRate)(nil).take("x", now) {
		t.Error("a rate of 0 should be no bound")
	}
}

// TestAttemptRateTableBounded: a flood from more addresses than the table
// holds keeps it at its size, forgetting the least recently seen first;
// an address forgotten so starts again with a full burst (what holding
// that many addresses buys an attacker anyway).
func TestAttemptRateTableBounded(t *testing.T) {
	r := newAttemptRate(1, 2)
	now := time.Unix(1_700_000_000, 0)
	r.take("first", now)
	r.take("first", now)
	if r.take("first", now) {
		t.Fatal("third attempt within a burst of 2 allowed")
	}
	for i := range rateTable + 10_000 {
		r.take(fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&255, i&255), now)
		if i%10_000 == 0 && r.size() > rateTable {
			t.Fatalf("%d buckets after %d addresses, want at most %d", r.size(), i+1, rateTable)
		}
	}
	if r.size() != rateTable {
		t.Errorf("%d buckets, want %d", r.size(), rateTable)
	}
	if !r.take("first", now) {
		t.Error("an address forgotten by the table still refused")
	}
}

// TestRekeyChargesDeviceAddress: a connection behind a balancer is charged
// when its PROXY header names the device's address, not before, and not
// at all when another node forwarded it.
func TestRekeyChargesDeviceAddress(t *testing.T) {
	tb := newHandshakeTable(t, 100, 100, 100)
	tb.hs.addressRate = newAttemptRate(1, 1)
	tb.enter("lb0", "via 10.0.0.1")
	tb.enter("lb1", "via 10.0.0.1")
	if !tb.hs.rekey(tb.ps["lb0"], tcpAddr("198.51.100.1")) {
		t.Error("the first attempt of 198.51.100.1 refused")
	}
	if tb.hs.rekey(tb.ps["lb1"], tcpAddr("198.51.100.1")) {
		t.Error("the second attempt of 198.51.100.1 within a burst of 1 allowed")
	}
	for i := range 3 {
		p, ok := tb.hs.enterFrom(&fakeConn{}, tcpAddr("10.0.0.2"), true, true)
		if !ok || !tb.hs.rekey(p, tcpAddr("198.51.100.1")) {
			t.Errorf("forwarded connection %d refused", i)
		}
	}
	if d := tb.hs.drops(); d[refusedRatePerAddress] != 1 {
		t.Errorf("drops %v, want 1 refused_rate_per_address", d)
	}
}
