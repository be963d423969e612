package dataout_test

import (
	"context"
	"errors"
	"testing"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// TestSealerKeyRing: a value sealed under an earlier key opens with a
// ring holding it, is stale, and Refresh seals it again under the current
// key, written back only while the row still holds what was read; without
// the ring it does not open.
func TestSealerKeyRing(t *testing.T) {
	oldKey, newKey := dataout.KeyFromToken("rop_old-operator-token-1"), dataout.KeyFromToken("rop_new-operator-token-2")
	old, _ := dataout.NewSealer(oldKey)
	ring, err := dataout.NewSealer(newKey, dataout.KeysFromTokens(" rop_old-operator-token-1 , ")...)
	if err != nil {
		t.Fatal(err)
	}
	current, _ := dataout.NewSealer(newKey)
	d := tenants.Destination{ID: "dst_1", Type: tenants.DestinationWebhook, URL: "https://h.example.com",
		Sealed: tenants.Sealed{Secret: old.SealSecret("acme", "dst_1", "whsec_x"), Headers: old.SealHeaders("acme", "dst_1", map[string]string{"A": "b"})}}
	if _, err := current.Webhook("acme", d); !errors.Is(err, dataout.ErrKeyChanged) {
		t.Fatalf("without the ring: %v, want ErrKeyChanged", err)
	}
	w, err := ring.Webhook("acme", d)
	if err != nil || w.Secret != "whsec_x" || w.Headers["A"] != "b" || !ring.Stale(d.Sealed.Secret) {
		t.Fatalf("with the ring: %+v, %v, stale %v", w, err, ring.Stale(d.Sealed.Secret))
	}
	st := &fakeResealer{row: d.Sealed}
	if err := ring.Refresh(context.Background(), st, "acme", d); err != nil || st.writes != 1 {
		t.Fatalf("Refresh: %v, %d writes", err, st.writes)
	}
	d.Sealed = st.row
	if ring.Stale(d.Sealed.Secret) || ring.Stale(d.Sealed.Headers) {
		t.Error("still stale after Refresh")
	}
	if w, err := current.Webhook("acme", d); err != nil || w.Secret != "whsec_x" || w.Headers["A"] != "b" {
		t.Errorf("re-sealed values under the current key alone: %+v, %v", w, err)
	}
	if err := ring.Refresh(context.Background(), st, "acme", d); err != nil || st.writes != 1 {
		t.Errorf("Refresh of current values wrote: %v, %d writes", err, st.writes)
	}
	// A Kafka password too.
	k := tenants.Destination{ID: "dst_2", Type: tenants.DestinationKafka, Kafka: &tenants.Kafka{Brokers: []string{"k:1"}, Topic: "t",
		SASL: &tenants.KafkaSASL{Mechanism: tenants.SASLPlain, Username: "u"}}, Sealed: tenants.Sealed{Password: old.SealPassword("acme", "dst_2", "pw")}}
	st = &fakeResealer{row: k.Sealed}
	if err := ring.Refresh(context.Background(), st, "acme", k); err != nil || st.writes != 1 {
		t.Fatalf("Refresh of a password: %v", err)
	}
	k.Sealed = st.row
	if w, err := current.Webhook("acme", k); err != nil || w.Kafka.Password != "pw" {
		t.Errorf("re-sealed password: %+v, %v", w.Kafka, err)
	}
}

// fakeResealer is a destination row's sealed values, replaced only if
// they are still what the caller read.
type fakeResealer struct {
	row    tenants.Sealed
	writes int
}

func (f *fakeResealer) ResealDestination(_ context.Context, _, _ string, from, to tenants.Sealed) (bool, error) {
	if f.row != from {
		return false, nil
	}
	f.row = to
	f.writes++
	return true, nil
}
