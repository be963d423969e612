package dataout_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// TestResealDestinations: after the operator token changed, one pass
// seals every destination's values sealed under the earlier token (a
// signing secret, header values, a Kafka password) again under the
// current one, over three tenants and more than a page of rows, so that
// a process without the earlier token opens them all; each value stays
// bound to its own tenant and row. Values sealed under the current token
// are not written, one that does not open is left and counted on every
// pass. Run on SQLite and Postgres.
func TestResealDestinations(t *testing.T) {
	for _, db := range []string{"SQLite", "Postgres"} {
		t.Run(db, func(t *testing.T) {
			url, dir := "", ""
			if db == "Postgres" {
				url = testenv.PostgresURL(t)
			} else {
				dir = t.TempDir()
			}
			testResealDestinations(t, url, dir)
		})
	}
}

func testResealDestinations(t *testing.T, databaseURL, dir string) {
	ctx := context.Background()
	st, err := tenants.Open(ctx, databaseURL, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	oldKey, newKey := dataout.KeyFromToken("rop_old-operator-token-1"), dataout.KeyFromToken("rop_new-operator-token-2")
	old, _ := dataout.NewSealer(oldKey)
	current, _ := dataout.NewSealer(newKey)
	ring, _ := dataout.NewSealer(newKey, oldKey)

	owner, err := st.CreateAccount(ctx, tenants.Signup{Email: "owner@example.com", Password: "correct horse battery"})
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ tenant, id, secret, header string }
	var stale, fresh []row
	const perTenant = 45 // three tenants: more than a page (100)
	for _, slug := range []string{"acme", "globex", "initech"} {
		if _, err := st.CreateTenant(ctx, owner.ID, tenants.TenantInput{Slug: slug}); err != nil {
			t.Fatal(err)
		}
		for i := range perTenant {
			id := tenants.NewDestinationID()
			r := row{slug, id, fmt.Sprintf("whsec_%s_%d", slug, i), fmt.Sprintf("Bearer %s-%d", slug, i)}
			sealer := old
			if i%9 == 0 {
				sealer = current // already under the current key
			}
			sealed := tenants.Sealed{Secret: sealer.SealSecret(slug, id, r.secret), Headers: sealer.SealHeaders(slug, id, map[string]string{"Authorization": r.header})}
			if _, err := st.CreateDestination(ctx, slug, id, tenants.DestinationInput{Name: fmt.Sprintf("d%d", i), Type: "webhook",
				URL: "https://hooks.example.com/" + id, Headers: map[string]string{"Authorization": r.header}}, sealed); err != nil {
				t.Fatal(err)
			}
			if sealer == old {
				stale = append(stale, r)
			} else {
				fresh = append(fresh, r)
			}
		}
	}
	// A Kafka destination's password, and a secret that does not open:
	// sealed for another tenant's row.
	kid := tenants.NewDestinationID()
	if _, err := st.CreateDestination(ctx, "acme", kid, tenants.DestinationInput{Name: "kafka", Type: "kafka",
		Kafka: &tenants.Kafka{Brokers: []string{"kafka.example.com:9093"}, Topic: "t", TLS: true,
			SASL: &tenants.KafkaSASL{Mechanism: tenants.SASLPlain, Username: "u", Password: "pw"}}},
		tenants.Sealed{Password: old.SealPassword("acme", kid, "kafka-pw")}); err != nil {
		t.Fatal(err)
	}
	moved := tenants.NewDestinationID()
	if _, err := st.CreateDestination(ctx, "globex", moved, tenants.DestinationInput{Name: "moved", Type: "webhook", URL: "https://hooks.example.com/moved"},
		tenants.Sealed{Secret: old.SealSecret("acme", moved, "whsec_moved")}); err != nil {
		t.Fatal(err)
	}

	// One stale row is rotated between the pass's read and its write: the
	// rotation wins, and the pass counts it as changed meanwhile.
	rotated := stale[len(stale)/2]
	stale = slices.DeleteFunc(stale, func(r row) bool { return r == rotated })
	rotatedSecret := "whsec_rotated"
	racing := &rotatingStore{Store: st, id: rotated.id, rotate: func() {
		if _, err := st.RotateDestinationSecret(ctx, rotated.tenant, rotated.id, current.SealSecret(rotated.tenant, rotated.id, rotatedSecret)); err != nil {
			t.Error(err)
		}
	}}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := ring.ResealDestinations(ctx, racing, log)
	if want := (dataout.ResealCount{Resealed: len(stale) + 1, Skipped: 1, Failed: 1}); err != nil || n != want {
		t.Fatalf("ResealDestinations = %+v, %v; want %+v", n, err, want)
	}
	if d, err := st.Destination(ctx, rotated.tenant, rotated.id); err != nil {
		t.Fatal(err)
	} else if w, err := ring.Webhook(rotated.tenant, d); err != nil || w.Secret != rotatedSecret || !ring.Stale(d.Sealed.Headers) {
		t.Errorf("the row rotated meanwhile: %+v, %v; want the rotation's secret, its headers still under the earlier key", w, err)
	}
	for _, r := range append(stale, fresh...) {
		d, err := st.Destination(ctx, r.tenant, r.id)
		if err != nil {
			t.Fatal(err)
		}
		w, err := current.Webhook(r.tenant, d)
		if err != nil || w.Secret != r.secret || w.Headers["Authorization"] != r.header {
			t.Fatalf("%s/%s without the earlier key: %+v, %v", r.tenant, r.id, w, err)
		}
	}
	d, _ := st.Destination(ctx, "acme", kid)
	if w, err := current.Webhook("acme", d); err != nil || w.Kafka == nil || w.Kafka.Password != "kafka-pw" {
		t.Errorf("the Kafka password without the earlier key: %+v, %v", w.Kafka, err)
	}
	// The next pass seals the rotated row's headers again, then nothing
	// is left but the row that does not open.
	if n, err := ring.ResealDestinations(ctx, st, log); err != nil || n != (dataout.ResealCount{Resealed: 1, Failed: 1}) {
		t.Errorf("a second pass = %+v, %v; want the rotated row's headers resealed, and the row that does not open", n, err)
	}
	if d, err := st.Destination(ctx, rotated.tenant, rotated.id); err != nil {
		t.Fatal(err)
	} else if w, err := current.Webhook(rotated.tenant, d); err != nil || w.Secret != rotatedSecret || w.Headers["Authorization"] != rotated.header {
		t.Errorf("the rotated row without the earlier key: %+v, %v", w, err)
	}
	if n, err := ring.ResealDestinations(ctx, st, log); err != nil || n != (dataout.ResealCount{Failed: 1}) {
		t.Errorf("a third pass = %+v, %v; want only the row that does not open", n, err)
	}
	if n, err := current.ResealDestinations(ctx, st, log); err != nil || n != (dataout.ResealCount{}) {
		t.Errorf("with no earlier key = %+v, %v; want nothing done", n, err)
	}
}

// rotatingStore rotates one destination's secret just before the pass
// writes that row sealed again.
type rotatingStore struct {
	*tenants.Store
	id     string
	rotate func()
}

func (s *rotatingStore) ResealDestination(ctx context.Context, tenant, id string, from, to tenants.Sealed) (bool, error) {
	if id == s.id {
		s.rotate()
	}
	return s.Store.ResealDestination(ctx, tenant, id, from, to)
}
