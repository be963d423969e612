package broker_test

import (
	"testing"
	"time"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// TestOutboxKeyRing: a destination whose secret was sealed under an
// earlier operator token, still in the key ring, is delivered to (signed
// with that secret), and its row is sealed again under the current token.
func TestOutboxKeyRing(t *testing.T) {
	const earlier = "rop_an-earlier-operator-token"
	ring, err := dataout.NewSealer(dataout.KeyFromToken("test-operator-token"), dataout.KeysFromTokens(earlier)...)
	if err != nil {
		t.Fatal(err)
	}
	s := newOutboxStack(t, time.Minute, func(c *broker.Config) { c.Delivery.Sealer = ring })
	s.tenant("acme")
	rc := newWebhookReceiver(t)
	old, _ := dataout.NewSealer(dataout.KeyFromToken(earlier))
	id := tenants.NewDestinationID()
	if _, err := s.store.CreateDestination(ctx, "acme", id, tenants.DestinationInput{Name: "hook", Type: "webhook", URL: rc.URL + "/hook"},
		tenants.Sealed{Secret: old.SealSecret("acme", id, rc.secret)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "sensors/#", Destination: "hook"}); err != nil {
		t.Fatal(err)
	}
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	pub.pub(t, "sensors/t", "1", 1, false)
	eventually(t, 10*time.Second, "the message reaches the receiver, signed", func() bool { return len(rc.messages()) == 1 })
	if _, unsigned := rc.counts(); unsigned != 0 {
		t.Errorf("%d requests badly signed", unsigned)
	}
	d, err := s.store.Destination(ctx, "acme", id)
	if err != nil {
		t.Fatal(err)
	}
	if ring.Stale(d.Sealed.Secret) {
		t.Error("the secret is still sealed under the earlier token")
	}
	if w, err := s.sealer.Webhook("acme", d); err != nil || w.Secret != rc.secret {
		t.Errorf("under the current token alone: %v", err)
	}
}
