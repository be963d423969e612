package web_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/csv"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
)

// TestConsoleImportCredentials: the upload page takes the certificate and
// public_key columns: a bad PEM is its row's error next to the field, and
// all or nothing then creates nothing; row by row pins the certificate and
// registers the key with their devices.
func TestConsoleImportCredentials(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("importer")
	b.tenant("importer")
	if a := b.get("/tenants/importer/device-import"); !strings.Contains(a.body, "<code>certificate</code>") {
		t.Error("the import page does not name the certificate column")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	var f strings.Builder
	w := csv.NewWriter(&f)
	w.WriteAll([][]string{
		{"name", "certificate", "public_key"},
		{"with-cert", caPEM(t, "with-cert"), ""},
		{"with-key", "", keyPEM},
		{"bad-key", "", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
	})
	a := b.upload("/tenants/importer/device-import", "all", f.String())
	if a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, "<td>4</td><td>public_key</td>") {
		t.Fatalf("all or nothing with a bad key: got %d, want 422 naming row 4's public_key\n%s", a.status, a.body)
	}
	if n, _ := s.store.DeviceCount(context.Background(), "importer"); n != 0 {
		t.Fatalf("all or nothing with a bad key created %d devices", n)
	}
	a = b.upload("/tenants/importer/device-import", "rows", f.String())
	if a.status != http.StatusOK {
		t.Fatalf("row by row: got %d", a.status)
	}
	if cs, err := s.store.DeviceCertificates(context.Background(), "importer", "with-cert"); err != nil || len(cs) != 1 || cs[0].Subject != "CN=with-cert" {
		t.Errorf("with-cert's certificates: %+v %v", cs, err)
	}
	if ks, err := s.store.DeviceKeys(context.Background(), "importer", "with-key"); err != nil || len(ks) != 1 || ks[0].Algorithm != "ES256" {
		t.Errorf("with-key's keys: %+v %v", ks, err)
	}
	if a := b.get("/tenants/importer/devices/with-key"); !strings.Contains(a.body, "ES256") {
		t.Error("with-key's page does not show its key")
	}
}
