package storetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// newCertificate makes a self-signed certificate, a CA one if ca.
func newCertificate(t *testing.T, cn string, ca bool, notAfter time.Time) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter, BasicConstraintsValid: true, IsCA: ca}
	if ca {
		tmpl.KeyUsage = x509.KeyUsageCertSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func testCertificates(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "certs@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	mustDevice(t, s, "acme", "d1")
	mustDevice(t, s, "other", "d1")
	year := time.Now().Add(365 * 24 * time.Hour)

	caPEM := newCertificate(t, "Acme devices CA", true, year)
	ca, err := s.CreateCA(ctx, "acme", tenants.CAInput{Certificate: caPEM})
	if err != nil || ca.ID == "" || !strings.Contains(ca.Subject, "Acme devices CA") || len(ca.Fingerprint) != 64 {
		t.Fatalf("CreateCA: %+v %v", ca, err)
	}
	if _, err := s.CreateCA(ctx, "acme", tenants.CAInput{Certificate: caPEM}); !errors.Is(err, tenants.ErrConflict) {
		t.Errorf("the same CA twice: %v", err)
	}
	// A CA belongs to one tenant: another may not register it too.
	if _, err := s.CreateCA(ctx, "other", tenants.CAInput{Certificate: caPEM}); !errors.Is(err, tenants.ErrCAInUse) || !errors.Is(err, tenants.ErrConflict) {
		t.Errorf("another tenant registers acme's CA: got %v, want ErrCAInUse (a conflict)", err)
	}
	if cas, _ := s.CAs(ctx, "acme"); len(cas) != 1 || cas[0].Shared {
		t.Errorf("acme's CAs after other's attempt: %+v, want the one, not shared", cas)
	}
	for name, pemText := range map[string]string{
		"not a CA": newCertificate(t, "leaf", false, year),
		"expired":  newCertificate(t, "old CA", true, time.Now().Add(-time.Minute)),
		"garbage":  "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
	} {
		if _, err := s.CreateCA(ctx, "acme", tenants.CAInput{Certificate: pemText}); !errors.Is(err, tenants.ErrInvalid) {
			t.Errorf("CA %s: %v", name, err)
		}
	}
	if cas, err := s.CAs(ctx, "acme"); err != nil || len(cas) != 1 || cas[0].Certificate != caPEM {
		t.Errorf("CAs: %+v %v", cas, err)
	}
	if cas, _ := s.CAs(ctx, "other"); len(cas) != 0 {
		t.Errorf("other sees acme's CAs: %+v", cas)
	}
	if err := s.DeleteCA(ctx, "other", ca.ID); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("other deletes acme's CA: %v", err)
	}

	leaf := newCertificate(t, "d1", false, year)
	dc, err := s.CreateDeviceCertificate(ctx, "acme", "d1", tenants.DeviceCertificateInput{Certificate: leaf})
	if err != nil || dc.NotAfter == nil || dc.Subject == "" || len(dc.Fingerprint) != 64 {
		t.Fatalf("CreateDeviceCertificate: %+v %v", dc, err)
	}
	colons := strings.ToUpper(strings.Join(strings.SplitAfter(strings.Repeat("ab", 32), "ab")[:32], ":"))
	byFP, err := s.CreateDeviceCertificate(ctx, "acme", "d1", tenants.DeviceCertificateInput{Fingerprint: colons})
	if err != nil || byFP.Fingerprint != strings.Repeat("ab", 32) || byFP.NotAfter != nil {
		t.Errorf("pin by fingerprint: %+v %v", byFP, err)
	}
	for name, in := range map[string]tenants.DeviceCertificateInput{
		"both":           {Certificate: leaf, Fingerprint: dc.Fingerprint},
		"neither":        {},
		"short digest":   {Fingerprint: "abcd"},
		"the same again": {Fingerprint: dc.Fingerprint},
	} {
		if _, err := s.CreateDeviceCertificate(ctx, "acme", "d1", in); err == nil {
			t.Errorf("device certificate %s: accepted", name)
		}
	}
	if _, err := s.CreateDeviceCertificate(ctx, "acme", "nobody", tenants.DeviceCertificateInput{Certificate: leaf}); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}
	if cs, err := s.DeviceCertificates(ctx, "acme", "d1"); err != nil || len(cs) != 2 {
		t.Errorf("DeviceCertificates: %+v %v", cs, err)
	}
	if cs, _ := s.DeviceCertificates(ctx, "other", "d1"); len(cs) != 0 {
		t.Errorf("other's d1 sees acme's certificates: %+v", cs)
	}
	if err := s.DeleteDeviceCertificate(ctx, "other", "d1", dc.ID); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("other deletes acme's certificate: %v", err)
	}
	if reopen != nil {
		r := reopen()
		if cas, _ := r.CAs(ctx, "acme"); len(cas) != 1 {
			t.Errorf("CAs after reopen: %d", len(cas))
		}
		if cs, _ := r.DeviceCertificates(ctx, "acme", "d1"); len(cs) != 2 {
			t.Errorf("device certificates after reopen: %d", len(cs))
		}
	}
	if err := s.DeleteDeviceCertificate(ctx, "acme", "d1", dc.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteCA(ctx, "acme", ca.ID); err != nil {
		t.Fatal(err)
	}
	if cas, _ := s.CAs(ctx, "acme"); len(cas) != 0 {
		t.Errorf("CAs after delete: %+v", cas)
	}
	// Once acme no longer trusts it, the CA is free for another tenant.
	if _, err := s.CreateCA(ctx, "other", tenants.CAInput{Certificate: caPEM}); err != nil {
		t.Errorf("other registers the CA acme deleted: %v", err)
	}

	// Two tenants registering one CA at the same moment: exactly one
	// gets it, however the transactions interleave.
	for round := range 5 {
		racePEM := newCertificate(t, "Race CA", true, year)
		results := make(chan error, 2)
		for _, tenant := range []string{"acme", "other"} {
			go func() {
				_, err := s.CreateCA(ctx, tenant, tenants.CAInput{Certificate: racePEM})
				results <- err
			}()
		}
		var won, lost int
		for range 2 {
			switch err := <-results; {
			case err == nil:
				won++
			case errors.Is(err, tenants.ErrCAInUse):
				lost++
			default:
				t.Errorf("round %d: %v", round, err)
			}
		}
		if won != 1 || lost != 1 {
			t.Errorf("round %d: %d tenants registered one CA at once, %d refused; want 1 and 1", round, won, lost)
		}
	}
}
