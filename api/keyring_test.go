package api_test

import (
	"context"
	"strings"
	"testing"

	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// TestDestinationKeyRing: after the operator token changed, with the
// earlier token in the key ring (ROOST_SECRET_KEYS_OLD), a destination
// sealed under it still sends (signed with its secret), and the send test
// seals it again under the current token, so that the earlier one can go.
func TestDestinationKeyRing(t *testing.T) {
	const earlier = "rop_an-earlier-operator-token"
	ring, err := dataout.NewSealer(dataout.KeyFromToken(adminToken), dataout.KeysFromTokens(earlier)...)
	if err != nil {
		t.Fatal(err)
	}
	loopback := allowLoopback(t)
	e := newEnvWith(t, func(cfg *api.Config) { loopback(cfg); cfg.Sealer = ring })
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	rc := newHookReceiver(t)
	old, _ := dataout.NewSealer(dataout.KeyFromToken(earlier))
	id := tenants.NewDestinationID()
	if _, err := e.store.CreateDestination(tenants.WithActor(context.Background(), "test"), "acme", id,
		tenants.DestinationInput{Name: "old", Type: "webhook", URL: rc.URL, Headers: map[string]string{"X-Token": "t0k"}},
		tenants.Sealed{Secret: old.SealSecret("acme", id, "whsec_from_before"), Headers: old.SealHeaders("acme", id, map[string]string{"X-Token": "t0k"})}); err != nil {
		t.Fatal(err)
	}
	rc.set("whsec_from_before", 204)
	r := e.do("POST", "/v1/tenants/acme/destinations/"+id+"/test", owner.token, nil)
	want(t, r, 200, "send test under an earlier token in the ring")
	if r.json()["delivered"] != true {
		t.Fatalf("send test: %s", r.body)
	}
	if n, bad := rc.counts(); n != 1 || bad != 0 || rc.got[0].Get("X-Token") != "t0k" {
		t.Errorf("receiver: %d requests, %d badly signed, X-Token %q", n, bad, rc.got[0].Get("X-Token"))
	}
	d, err := e.store.Destination(context.Background(), "acme", id)
	if err != nil {
		t.Fatal(err)
	}
	current := mustSealer(t) // the current token alone
	wh, err := current.Webhook("acme", d)
	if err != nil || wh.Secret != "whsec_from_before" || wh.Headers["X-Token"] != "t0k" {
		t.Errorf("after the send test, under the current token alone: %+v, %v", wh, err)
	}
	if strings.Contains(d.Sealed.Secret, "whsec_from_before") {
		t.Error("re-sealed in the clear")
	}
}
