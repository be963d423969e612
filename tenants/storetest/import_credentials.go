package storetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// testImportCredentials: an import's certificates and public keys are
// pinned and registered with their devices (600 of each, over a batch),
// so that the pinned certificate verifies for its device; a bad PEM is its
// row's error, and all-or-nothing then stores no credential at all.
func testImportCredentials(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "importer@example.com")
	mustTenant(t, s, owner, "importer")
	limit := int64(1000)
	if _, err := s.AdminUpdateTenant(ctx, "importer", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_devices": &limit}}); err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "c"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}))
	leaf, _ := x509.ParseCertificate(certDER)

	var rows []tenants.ImportRow
	for i := range 600 {
		rows = append(rows, tenants.ImportRow{Row: i + 2, Input: tenants.DeviceInput{Name: fmt.Sprintf("d%d", i)}, Certificate: certPEM, PublicKey: keyPEM})
	}
	bad := append(rows[:len(rows):len(rows)], tenants.ImportRow{Row: 602, Input: tenants.DeviceInput{Name: "bad"}, PublicKey: "junk"})
	res, err := s.ImportDevices(ctx, "importer", bad, tenants.ImportAll)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 1 || res.Errors[0].Row != 602 || res.Errors[0].Field != "public_key" || len(res.Created) != 0 {
		t.Fatalf("all mode with a bad key: errors %+v, created %d; want row 602 public_key and none", res.Errors, len(res.Created))
	}
	if n, _ := s.DeviceCount(ctx, "importer"); n != 0 {
		t.Fatalf("all mode with a bad key created %d devices", n)
	}

	res, err = s.ImportDevices(ctx, "importer", rows, tenants.ImportAll)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 0 || len(res.Created) != 600 {
		t.Fatalf("import: errors %+v, created %d; want none and 600", res.Errors, len(res.Created))
	}
	for _, name := range []string{"d0", "d599"} {
		certs, err := s.DeviceCertificates(ctx, "importer", name)
		if err != nil || len(certs) != 1 || certs[0].Fingerprint != tenants.Fingerprint(certDER) {
			t.Errorf("%s's certificates: %+v %v, want the imported one", name, certs, err)
		}
		if _, err := tenants.VerifyDeviceCertificate([]*x509.Certificate{leaf}, "importer", name, nil, certs, time.Now()); err != nil {
			t.Errorf("%s: the imported certificate does not verify: %v", name, err)
		}
		keys, err := s.DeviceKeys(ctx, "importer", name)
		if err != nil || len(keys) != 1 || keys[0].Algorithm != tenants.AlgES256 || keys[0].ID != findKey(res, name) {
			t.Errorf("%s's keys: %+v %v, want the imported one", name, keys, err)
		}
	}
}

func findKey(res tenants.ImportResult, name string) string {
	for _, d := range res.Created {
		if d.Device.Name == name && d.Key != nil {
			return d.Key.ID
		}
	}
	return ""
}
