package broker_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
)

// certConnack connects over TLS with cert and returns the MQTT 5 CONNACK's
// reason code.
func certConnack(t *testing.T, tlsAddr string, roots *x509.CertPool, cert tls.Certificate, username string) byte {
	t.Helper()
	conn, err := tls.Dial("tcp", tlsAddr, &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatalf("TLS: %v", err)
	}
	code, err := connackV5(conn, username, "", "sensor-1")
	if err != nil {
		t.Fatalf("%s: %v", username, err)
	}
	return code
}

// TestCACrossTenant is the question issue 17 left open: two tenants buy
// sensors from one maker and would both register the maker's CA. A
// certificate the maker made for acme's sensor-1 (CN sensor-1) must not
// connect as other's sensor-1: the CA stays acme's, other's registration
// is refused.
func TestCACrossTenant(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.tenant("other")
	s.device("acme", "sensor-1")
	s.device("other", "sensor-1")
	tlsAddr, roots := serveTLS(t, s.hub)
	maker := newIssuer(t, "Sensor maker CA")
	if _, err := s.store.CreateCA(ctx, "acme", tenants.CAInput{Certificate: maker.pem()}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.CreateCA(ctx, "other", tenants.CAInput{Certificate: maker.pem()}); err == nil {
		t.Error("other registered acme's CA")
	}
	cert := maker.leaf(t, "sensor-1", "", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if got := certConnack(t, tlsAddr, roots, cert, "acme/sensor-1"); got != 0 {
		t.Errorf("as acme/sensor-1: got 0x%02x, want 0", got)
	}
	if got := certConnack(t, tlsAddr, roots, cert, "other/sensor-1"); got != 0x86 {
		t.Errorf("acme's certificate as other/sensor-1: got 0x%02x, want 0x86", got)
	}
}

// TestSharedCAOverMQTT: a CA two tenants registered before the rule (put
// in the database as an older Roost did) admits a certificate only by the
// URI SAN naming its tenant: by CN alone neither tenant's sensor-1 gets
// in, since nothing says which tenant the certificate was made for.
func TestSharedCAOverMQTT(t *testing.T) {
	dir := t.TempDir()
	dirStore, err := tenants.Open(context.Background(), "", dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dirStore.Close() })
	if _, err := dirStore.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := newStack(t, func(c *broker.Config) { c.Directory, c.Changes, c.Usage = dirStore, dirStore.Changes(), dirStore })
	s.store = dirStore
	owner, err := dirStore.CreateAccount(ctx, tenants.Signup{Email: "o@example.com", Password: "correct horse battery"})
	if err != nil {
		t.Fatal(err)
	}
	s.owner = owner
	s.tenant("acme")
	s.tenant("other")
	s.device("acme", "sensor-1")
	s.device("other", "sensor-1")
	tlsAddr, roots := serveTLS(t, s.hub)
	maker := newIssuer(t, "Sensor maker CA")
	if _, err := dirStore.CreateCA(ctx, "acme", tenants.CAInput{Certificate: maker.pem()}); err != nil {
		t.Fatal(err)
	}
	// What an older Roost let other do.
	ca, err := tenants.ParseCA(tenants.CAInput{Certificate: maker.pem()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "roost.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`INSERT INTO tenant_cas (id, tenant, subject, fingerprint, certificate, not_after, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		"ca_legacy", "other", ca.Subject, ca.Fingerprint, ca.Certificate, ca.NotAfter, time.Now().UTC()); err != nil {
		t.Fatal(err)
	}

	now := time.Now()
	byCN := maker.leaf(t, "sensor-1", "", now.Add(-time.Hour), now.Add(time.Hour))
	byURI := maker.leaf(t, "sensor-1", "roost://acme/sensor-1", now.Add(-time.Hour), now.Add(time.Hour))
	for _, tc := range []struct {
		name     string
		cert     tls.Certificate
		username string
		want     byte
	}{
		{"CN alone, as other/sensor-1", byCN, "other/sensor-1", 0x86},
		{"CN alone, as acme/sensor-1", byCN, "acme/sensor-1", 0x86},
		{"URI SAN roost://acme/sensor-1, as acme/sensor-1", byURI, "acme/sensor-1", 0},
		{"URI SAN roost://acme/sensor-1, as other/sensor-1", byURI, "other/sensor-1", 0x86},
	} {
		if got := certConnack(t, tlsAddr, roots, tc.cert, tc.username); got != tc.want {
			t.Errorf("%s: got 0x%02x, want 0x%02x", tc.name, got, tc.want)
		}
	}
}
