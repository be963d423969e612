package tenants_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// testIssuer is a CA that signs client certificates.
type testIssuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestIssuer(t *testing.T, cn string) testIssuer {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return testIssuer{cert, key}
}

func (i testIssuer) pem() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: i.cert.Raw}))
}

// leaf is a client certificate i signs, naming cn and, if given, uri.
func (i testIssuer) leaf(t *testing.T, cn, uri string) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if uri != "" {
		u, _ := url.Parse(uri)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.cert, &key.PublicKey, i.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// TestSharedCAFromBeforeTheRule: a CA two tenants registered before a CA
// was bound to one tenant is marked shared in both; a third tenant may not
// register it; a certificate under it admits a device only by the URI SAN
// naming its tenant, never by CN alone; once one of the two deletes it,
// the other's is its own again.
func TestSharedCAFromBeforeTheRule(t *testing.T) {
	for _, db := range []string{"sqlite", "postgres"} {
		t.Run(db, func(t *testing.T) {
			url := ""
			if db == "postgres" {
				url = testenv.PostgresURL(t)
			}
			s := openMigrated(t, url, t.TempDir())
			ctx := tenants.WithActor(context.Background(), "test")
			owner, err := s.CreateAccount(ctx, tenants.Signup{Email: "o@example.com", Password: "correct horse battery"})
			if err != nil {
				t.Fatal(err)
			}
			for _, slug := range []string{"acme", "other", "third"} {
				if _, err := s.CreateTenant(ctx, owner.ID, tenants.TenantInput{Slug: slug}); err != nil {
					t.Fatal(err)
				}
			}
			maker := newTestIssuer(t, "Sensor maker CA")
			if _, err := s.CreateCA(ctx, "acme", tenants.CAInput{Certificate: maker.pem()}); err != nil {
				t.Fatal(err)
			}
			otherCA, err := tenants.InsertCAUnchecked(ctx, s, "other", tenants.CAInput{Certificate: maker.pem()})
			if err != nil {
				t.Fatal(err)
			}
			cas := map[string][]tenants.CA{}
			for _, slug := range []string{"acme", "other"} {
				if cas[slug], err = s.CAs(ctx, slug); err != nil || len(cas[slug]) != 1 || !cas[slug][0].Shared {
					t.Fatalf("%s's CAs: %+v %v, want the maker's, shared", slug, cas[slug], err)
				}
			}
			if _, err := s.CreateCA(ctx, "third", tenants.CAInput{Certificate: maker.pem()}); !errors.Is(err, tenants.ErrCAInUse) {
				t.Errorf("a third tenant registers the shared CA: got %v, want ErrCAInUse", err)
			}

			now := time.Now()
			byCN := maker.leaf(t, "sensor-1", "")
			byURI := maker.leaf(t, "anything", "roost://acme/sensor-1")
			for _, tc := range []struct {
				name           string
				leaf           *x509.Certificate
				tenant, device string
				ok             bool
			}{
				{"CN alone, as acme's", byCN, "acme", "sensor-1", false},
				{"CN alone, as other's", byCN, "other", "sensor-1", false},
				{"URI SAN, as acme's", byURI, "acme", "sensor-1", true},
				{"URI SAN for acme, as other's", byURI, "other", "sensor-1", false},
			} {
				_, err := tenants.VerifyDeviceCertificate([]*x509.Certificate{tc.leaf}, tc.tenant, tc.device, cas[tc.tenant], nil, now)
				if (err == nil) != tc.ok {
					t.Errorf("%s: got %v, want accepted %v", tc.name, err, tc.ok)
				}
			}

			if err := s.DeleteCA(ctx, "other", otherCA.ID); err != nil {
				t.Fatal(err)
			}
			acme, _ := s.CAs(ctx, "acme")
			if len(acme) != 1 || acme[0].Shared {
				t.Errorf("acme's CAs once other deleted it: %+v, want not shared", acme)
			}
			if _, err := tenants.VerifyDeviceCertificate([]*x509.Certificate{byCN}, "acme", "sensor-1", acme, nil, now); err != nil {
				t.Errorf("CN alone, as acme's, once the CA is acme's alone: %v", err)
			}
		})
	}
}
