package storetest

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/roosthub/roost/tenants"
)

// testKafkaDestinations: a Kafka destination keeps its settings in the
// clear without the password, and the password as sealed; an update
// without a password keeps it, one without SASL drops it; webhook fields
// are refused on it and Kafka settings on a webhook.
func testKafkaDestinations(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	id := tenants.NewDestinationID()
	k := &tenants.Kafka{Brokers: []string{"kafka-1.example.com:9093", "kafka-2.example.com:9093"}, Topic: "telemetry", TLS: true,
		SASL: &tenants.KafkaSASL{Mechanism: tenants.SASLScramSHA512, Username: "roost", Password: "plain-password"}}
	d, err := s.CreateDestination(ctx, "acme", id, tenants.DestinationInput{Name: "plant", Type: "kafka", Kafka: k}, tenants.Sealed{Password: "sealed-pw"})
	if err != nil || d.Kafka == nil || d.Kafka.SASL.Password != "" || d.URL != "" {
		t.Fatalf("created %+v, %v; want the settings without password", d, err)
	}
	got, err := reopen().Destination(ctx, "acme", id)
	if err != nil || got.Type != "kafka" || !slices.Equal(got.Kafka.Brokers, k.Brokers) || got.Kafka.Topic != "telemetry" || !got.Kafka.TLS ||
		got.Kafka.SASL.Username != "roost" || got.Kafka.SASL.Password != "" || got.Sealed.Password != "sealed-pw" || got.Sealed.Secret != "" {
		t.Errorf("read back %+v %+v, %v", got, got.Kafka, err)
	}
	_, err = s.CreateDestination(ctx, "acme", tenants.NewDestinationID(), tenants.DestinationInput{Name: "k2", Type: "kafka", Kafka: k}, tenants.Sealed{})
	if err == nil {
		t.Error("a Kafka destination with SASL and no sealed password was created")
	}
	for _, bad := range []struct {
		k     tenants.Kafka
		field string
	}{
		{tenants.Kafka{Topic: "t"}, "kafka.brokers"},
		{tenants.Kafka{Brokers: []string{"host"}, Topic: "t"}, "kafka.brokers"},
		{tenants.Kafka{Brokers: []string{"host:0"}, Topic: "t"}, "kafka.brokers"},
		{tenants.Kafka{Brokers: []string{"h:1"}, Topic: ".."}, "kafka.topic"},
		{tenants.Kafka{Brokers: []string{"h:1"}, Topic: "t", CA: "x"}, "kafka.tls"},
		{tenants.Kafka{Brokers: []string{"h:1"}, Topic: "t", TLS: true, CA: "x"}, "kafka.ca"},
		{tenants.Kafka{Brokers: []string{"h:1"}, Topic: "t", SASL: &tenants.KafkaSASL{Mechanism: "OAUTHBEARER", Username: "u", Password: "p"}}, "kafka.sasl.mechanism"},
		{tenants.Kafka{Brokers: []string{"h:1"}, Topic: "t", SASL: &tenants.KafkaSASL{Mechanism: "PLAIN", Password: "p"}}, "kafka.sasl.username"},
		{tenants.Kafka{Brokers: []string{"h:1"}, Topic: "t", SASL: &tenants.KafkaSASL{Mechanism: "PLAIN", Username: "u"}}, "kafka.sasl.password"},
	} {
		_, err := s.CreateDestination(ctx, "acme", tenants.NewDestinationID(), tenants.DestinationInput{Name: "bad", Type: "kafka", Kafka: &bad.k}, tenants.Sealed{Password: "x"})
		wantField(t, fmt.Sprintf("CreateDestination(%+v)", bad.k), err, bad.field)
	}

	// Without a password the sealed one stays; a new one replaces it;
	// without SASL none is kept.
	k2 := *k.Public()
	k2.Topic = "telemetry-2"
	up, err := s.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{Kafka: &k2}, nil)
	if err != nil || up.Kafka.Topic != "telemetry-2" || up.Sealed.Password != "sealed-pw" {
		t.Errorf("update without password: %+v, %v", up, err)
	}
	// Kept, the password would go wherever the new settings say: other
	// brokers, or PLAIN instead of SCRAM, need it given again.
	moved := k2
	moved.Brokers = []string{"attacker.example.com:9093"}
	plain := k2
	plain.SASL = &tenants.KafkaSASL{Mechanism: tenants.SASLPlain, Username: k2.SASL.Username}
	for what, k := range map[string]tenants.Kafka{"other brokers": moved, "PLAIN instead of SCRAM": plain} {
		_, err := s.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{Kafka: &k}, nil)
		wantField(t, "update to "+what+" without the password", err, "kafka.sasl.password")
	}
	up, err = s.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{Kafka: &k2, SealedPassword: "sealed-pw-2"}, nil)
	if err != nil || up.Sealed.Password != "sealed-pw-2" {
		t.Errorf("update with a password: %+v, %v", up, err)
	}
	k3 := k2
	k3.SASL = nil
	if up, err = s.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{Kafka: &k3}, nil); err != nil || up.Sealed.Password != "" || up.Kafka.SASL != nil {
		t.Errorf("update without SASL: %+v, %v", up, err)
	}
	if _, err = s.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{Kafka: &k2}, nil); err == nil {
		t.Error("SASL set again without a password")
	}
	url := "https://x.example.com"
	_, err = s.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{URL: &url}, nil)
	wantField(t, "a URL for a Kafka destination", err, "url")
	hook := mustDestination(t, s, "acme", "hook")
	_, err = s.UpdateDestination(ctx, "acme", hook.ID, tenants.DestinationUpdate{Kafka: &k3}, nil)
	wantField(t, "Kafka settings for a webhook", err, "kafka")
}

// testGoneOutboxes: a destination deleted alone or with its tenant is
// listed until forgotten; one that exists is neither listed nor
// forgotten.
func testGoneOutboxes(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	a1, a2 := mustDestination(t, s, "acme", "a1"), mustDestination(t, s, "acme", "a2")
	o1, o2 := mustDestination(t, s, "other", "o1"), mustDestination(t, s, "other", "o2")
	if gone, err := s.GoneOutboxes(ctx, 100); err != nil || len(gone) != 0 {
		t.Fatalf("GoneOutboxes with every destination there: %+v, %v", gone, err)
	}
	if err := s.DeleteDestination(ctx, "other", o1.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	gone, err := s.GoneOutboxes(ctx, 100)
	want := []tenants.OutboxRef{{Tenant: "acme", Destination: a1.ID}, {Tenant: "acme", Destination: a2.ID}, {Tenant: "other", Destination: o1.ID}}
	slices.SortFunc(want, func(a, b tenants.OutboxRef) int {
		return cmpRef(a, b)
	})
	if err != nil || !slices.Equal(gone, want) {
		t.Fatalf("GoneOutboxes: %+v, %v; want %+v", gone, err, want)
	}
	if limited, _ := s.GoneOutboxes(ctx, 2); len(limited) != 2 {
		t.Errorf("GoneOutboxes(limit 2): %d", len(limited))
	}
	for _, g := range gone {
		if err := s.ForgetOutbox(ctx, g.Tenant, g.Destination); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.ForgetOutbox(ctx, "other", o2.ID); err != nil {
		t.Fatal(err)
	}
	if gone, err := s.GoneOutboxes(ctx, 100); err != nil || len(gone) != 0 {
		t.Errorf("after forgetting: %+v, %v", gone, err)
	}
	if err := s.DeleteDestination(ctx, "other", o2.ID); err != nil {
		t.Fatal(err)
	}
	if gone, _ := s.GoneOutboxes(ctx, 100); len(gone) != 1 || gone[0].Destination != o2.ID {
		t.Errorf("an existing destination was forgotten: after its deletion, GoneOutboxes = %+v", gone)
	}
}

func cmpRef(a, b tenants.OutboxRef) int {
	switch {
	case a.Tenant+"/"+a.Destination < b.Tenant+"/"+b.Destination:
		return -1
	case a.Tenant+"/"+a.Destination > b.Tenant+"/"+b.Destination:
		return 1
	}
	return 0
}

// testResealDestination: sealed values are replaced only while they are
// what the caller read, and only in the destination's tenant.
func testResealDestination(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	d := mustDestination(t, s, "acme", "ingest")
	to := tenants.Sealed{Secret: "resealed-secret", Headers: "resealed-headers"}
	if ok, err := s.ResealDestination(ctx, "other", d.ID, d.Sealed, to); ok || err != nil {
		t.Errorf("reseal through another tenant: %v, %v", ok, err)
	}
	if ok, err := s.ResealDestination(ctx, "acme", d.ID, tenants.Sealed{Secret: "not what is there"}, to); ok || err != nil {
		t.Errorf("reseal from values no longer there: %v, %v", ok, err)
	}
	if ok, err := s.ResealDestination(ctx, "acme", d.ID, d.Sealed, to); !ok || err != nil {
		t.Fatalf("reseal: %v, %v", ok, err)
	}
	got, err := s.Destination(ctx, "acme", d.ID)
	if err != nil || got.Sealed != to {
		t.Errorf("after the reseal: %+v, %v", got.Sealed, err)
	}
}

// testSealedUnder: the values sealed under a key are found by the key's
// prefix taken literally (LIKE's _ and % in it match only themselves),
// for destinations and two-factor secrets; ResealMFA replaces a secret
// only while it still holds what was read.
func testSealedUnder(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	create := func(tenant string, sealed tenants.Sealed) string {
		t.Helper()
		id := tenants.NewDestinationID()
		if _, err := s.CreateDestination(ctx, tenant, id, tenants.DestinationInput{Name: "d-" + id, Type: "webhook", URL: "https://hooks.example.com/" + id}, sealed); err != nil {
			t.Fatal(err)
		}
		return id
	}
	wanted := []string{
		create("other", tenants.Sealed{Secret: "v1.a_c.secret"}),
		create("acme", tenants.Sealed{Secret: "v1.new.secret", Headers: "v1.a%c.headers"}),
	}
	create("acme", tenants.Sealed{Secret: "v1.abc.secret"})
	create("acme", tenants.Sealed{Secret: "v1.new.secret", Headers: "v1.abbc.headers"})
	got, err := s.DestinationsSealedUnder(ctx, []string{"v1.a_c.", "v1.a%c."}, "", "", 10)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range got {
		ids = append(ids, d.Tenant+"/"+d.ID)
	}
	if want := []string{"acme/" + wanted[1], "other/" + wanted[0]}; !slices.Equal(ids, want) {
		t.Errorf("DestinationsSealedUnder = %v, want %v", ids, want)
	}
	if got, err := s.DestinationsSealedUnder(ctx, []string{"v1.a_c.", "v1.a%c."}, "acme", wanted[1], 10); err != nil || len(got) != 1 || got[0].ID != wanted[0] {
		t.Errorf("the page after acme/%s = %+v, %v", wanted[1], got, err)
	}

	a, b := mustAccount(t, s, "a@example.com"), mustAccount(t, s, "b@example.com")
	if err := s.SetUpMFA(ctx, a.ID, "v1.a_c.totp"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUpMFA(ctx, b.ID, "v1.abc.totp"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.MFASealedUnder(ctx, []string{"v1.a_c."}, "", 10); err != nil || len(got) != 1 || got[0] != (tenants.SealedMFA{Account: a.ID, Secret: "v1.a_c.totp"}) {
		t.Errorf("MFASealedUnder = %+v, %v", got, err)
	}
	if ok, err := s.ResealMFA(ctx, a.ID, "v1.a_c.other", "v1.new.totp"); ok || err != nil {
		t.Errorf("reseal from a value no longer there: %v, %v", ok, err)
	}
	if ok, err := s.ResealMFA(ctx, a.ID, "v1.a_c.totp", "v1.new.totp"); !ok || err != nil {
		t.Fatalf("reseal: %v, %v", ok, err)
	}
	if m, err := s.MFA(ctx, a.ID); err != nil || m.Secret != "v1.new.totp" {
		t.Errorf("after the reseal: %q, %v", m.Secret, err)
	}
}

// testDestinationPolicy: a destination's own outbox_policy is stored at
// creation, replaced by an update and handed back to the tenant's with
// ""; another value is invalid.
func testDestinationPolicy(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	id := tenants.NewDestinationID()
	in := tenants.DestinationInput{Name: "billing", Type: "webhook", URL: "https://hooks.example.com/b", OutboxPolicy: "sometimes"}
	if _, err := s.CreateDestination(ctx, "acme", id, in, tenants.Sealed{Secret: "sealed"}); !errors.Is(err, tenants.ErrInvalid) {
		t.Fatalf("create with an unknown policy: %v, want ErrInvalid", err)
	}
	in.OutboxPolicy = tenants.OutboxRefuse
	if d, err := s.CreateDestination(ctx, "acme", id, in, tenants.Sealed{Secret: "sealed"}); err != nil || d.OutboxPolicy != tenants.OutboxRefuse {
		t.Fatalf("create: %+v, %v", d, err)
	}
	if reopen != nil {
		s = reopen()
	}
	if d, err := s.Destination(ctx, "acme", id); err != nil || d.OutboxPolicy != tenants.OutboxRefuse {
		t.Errorf("read: %q, %v; want refuse", d.OutboxPolicy, err)
	}
	for _, p := range []tenants.OutboxPolicy{tenants.OutboxDropOldest, ""} {
		if d, err := s.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{OutboxPolicy: &p}, nil); err != nil || d.OutboxPolicy != p {
			t.Errorf("update to %q: %q, %v", p, d.OutboxPolicy, err)
		}
		if d, _ := s.Destination(ctx, "acme", id); d.OutboxPolicy != p {
			t.Errorf("after the update to %q it reads %q", p, d.OutboxPolicy)
		}
	}
	bad := tenants.OutboxPolicy("later")
	if _, err := s.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{OutboxPolicy: &bad}, nil); !errors.Is(err, tenants.ErrInvalid) {
		t.Errorf("update to an unknown policy: %v, want ErrInvalid", err)
	}
	// Its own max_outbox: kept across other updates, 0 is the quota again.
	for _, n := range []int64{250, 0} {
		if d, err := s.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{MaxOutbox: &n}, nil); err != nil || d.MaxOutbox != n {
			t.Errorf("update max_outbox to %d: %d, %v", n, d.MaxOutbox, err)
		}
		name := fmt.Sprintf("billing-%d", n)
		if d, err := s.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{Name: &name}, nil); err != nil || d.MaxOutbox != n {
			t.Errorf("a rename after max_outbox %d: %d, %v", n, d.MaxOutbox, err)
		}
	}
	for _, n := range []int64{-1, tenants.MaxDestinationOutbox + 1} {
		if _, err := s.UpdateDestination(ctx, "acme", id, tenants.DestinationUpdate{MaxOutbox: &n}, nil); !errors.Is(err, tenants.ErrInvalid) {
			t.Errorf("max_outbox %d: %v, want ErrInvalid", n, err)
		}
	}
}

// testDestinationHeadersFollowURL: a webhook's URL moved within its
// origin keeps its headers; moved to another scheme, host or port, it
// needs them again (or {} for none), and without them nothing changes.
func testDestinationHeadersFollowURL(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	d := mustDestination(t, s, "acme", "ingest") // https://hooks.example.com/ingest, with a header
	seal := func(h map[string]string) string { return fmt.Sprintf("sealed-%d-headers", len(h)) }
	update := func(u string, h *map[string]string) (tenants.Destination, error) {
		return s.UpdateDestination(ctx, "acme", d.ID, tenants.DestinationUpdate{URL: &u, Headers: h}, seal)
	}
	if up, err := update("https://HOOKS.example.com/v2", nil); err != nil || up.Sealed.Headers != d.Sealed.Headers {
		t.Errorf("moved within its origin: %q, %v; want the headers kept", up.Sealed.Headers, err)
	}
	for _, u := range []string{"https://attacker.example.com/v2", "http://hooks.example.com/v2", "https://hooks.example.com:8443/v2"} {
		_, err := update(u, nil)
		wantField(t, "moved to "+u+" without its headers", err, "headers")
	}
	if got, _ := s.Destination(ctx, "acme", d.ID); got.URL != "https://HOOKS.example.com/v2" || got.Sealed.Headers != d.Sealed.Headers {
		t.Errorf("after the refused moves: %q, %q", got.URL, got.Sealed.Headers)
	}
	if up, err := update("https://elsewhere.example.com/", &map[string]string{"X-Key": "k"}); err != nil || up.Sealed.Headers != "sealed-1-headers" {
		t.Errorf("moved with new headers: %q, %v", up.Sealed.Headers, err)
	}
	if up, err := update("https://third.example.com/", &map[string]string{}); err != nil || up.Sealed.Headers != "" || len(up.Headers) != 0 {
		t.Errorf("moved with no headers: %q %v, %v", up.Sealed.Headers, up.Headers, err)
	}
	if _, err := update("https://fourth.example.com/", nil); err != nil {
		t.Errorf("moved without headers, having none: %v", err)
	}
}
