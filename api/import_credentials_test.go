package api_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/csv"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/golang-jwt/jwt/v5"

	"github.com/roosthub/roost/transport"
)

// selfSignedClient makes a client certificate signed by its own key, to
// pin to a device, and returns it with its PEM.
func selfSignedClient(t *testing.T, cn string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// newDeviceKey makes an ECDSA P-256 key and returns it with its public
// half as PEM.
func newDeviceKey(t *testing.T) (*ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// deviceJWT is a device token for tenant signed by key, valid an hour.
func deviceJWT(t *testing.T, key *ecdsa.PrivateKey, tenant string) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.RegisteredClaims{Audience: jwt.ClaimStrings{tenant},
		IssuedAt: jwt.NewNumericDate(time.Now()), ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serveTLS gives the env's hub a TLS listener with a development
// certificate for localhost, and returns a dialer that presents cert.
func (e *env) serveTLS(t *testing.T) func(cert tls.Certificate, username string) (byte, error) {
	t.Helper()
	files, err := transport.DevCertificates(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	server, err := transport.LoadCertificate(files.Cert, files.Key, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.hub.Serve(tls.NewListener(raw, e.hub.TLSConfig(transport.ServerConfig(server))))
	roots := x509.NewCertPool()
	caPEM, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots.AppendCertsFromPEM(caPEM)
	return func(cert tls.Certificate, username string) (byte, error) {
		conn, err := tls.Dial("tcp", raw.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "localhost",
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }})
		if err != nil {
			return 0, err
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ca, err := c.Connect(ctx, &paho.Connect{ClientID: strings.SplitN(username, "/", 2)[1], KeepAlive: 30, CleanStart: true, Username: username, UsernameFlag: true})
		if ca == nil {
			conn.Close()
			return 0, err
		}
		if ca.ReasonCode == 0 {
			t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
		} else {
			conn.Close()
		}
		return ca.ReasonCode, nil
	}
}

// TestDeviceImportCredentials: an import's rows may carry a certificate to
// pin and a public key to register (CSV columns, NDJSON fields); the
// imported devices then connect over TLS with that certificate and no
// password, and with a token signed by that key. A bad certificate or key
// is its row's error (field certificate or public_key): all-or-nothing
// creates nothing, per row creates the others. Another tenant's device of
// the same name gets neither the certificate nor the key.
func TestDeviceImportCredentials(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	e.mustTenant(u, "other")
	e.mustDevice(u.token, "other", "cert-dev")
	e.mustDevice(u.token, "other", "key-dev")
	dialTLS := e.serveTLS(t)

	cert, certPEM := selfSignedClient(t, "cert-dev")
	key, keyPEM := newDeviceKey(t)
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	w.WriteAll([][]string{
		{"name", "certificate", "public_key", "metadata.room"},
		{"cert-dev", certPEM, "", "r1"},                                                        // row 2
		{"key-dev", "", keyPEM, "r2"},                                                          // row 3
		{"bad-cert", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "", ""}, // row 4
		{"bad-key", "", "not a key", ""},                                                       // row 5
		{"rsa-1024", "", strings.Replace(keyPEM, "PUBLIC KEY", "CERTIFICATE", 2), ""},          // row 6: the wrong block
	})
	body := b.String()
	rowErrors := func(r response) string {
		var got []string
		for _, it := range asSlice(r.json()["errors"]) {
			m := it.(map[string]any)
			got = append(got, strings.Join([]string{jsonString(m["row"]), m["field"].(string), m["code"].(string)}, ":"))
		}
		return strings.Join(got, " ")
	}
	const wantErrs = "4:certificate:invalid 5:public_key:invalid 6:public_key:invalid"

	r := e.importReq(u.token, "", "text/csv", "", body)
	want(t, r, 422, "all or nothing with bad PEM rows")
	if got := rowErrors(r); got != wantErrs {
		t.Errorf("all mode errors: got %q, want %q", got, wantErrs)
	}
	wantProblem(t, e.do("GET", "/v1/tenants/acme/devices/cert-dev", u.token, nil), 404, "not_found", "", "a device of a refused import")
	if code, err := dialTLS(cert, "acme/cert-dev"); err == nil && code == 0 {
		t.Error("the certificate of a refused import connects")
	}

	r = e.importReq(u.token, "?mode=rows", "text/csv", "", body)
	want(t, r, 200, "per row with bad PEM rows")
	if got := rowErrors(r); got != wantErrs {
		t.Errorf("rows mode errors: got %q, want %q", got, wantErrs)
	}
	created := asSlice(r.json()["created"])
	if len(created) != 2 {
		t.Fatalf("rows mode: created %d, want 2: %s", len(created), r.body)
	}
	c0, c1 := created[0].(map[string]any), created[1].(map[string]any)
	if dc, _ := c0["certificate"].(map[string]any); dc == nil || dc["fingerprint"] == "" || c0["key"] != nil {
		t.Errorf("created cert-dev: got %v, want its certificate and no key", c0)
	}
	if k, _ := c1["key"].(map[string]any); k == nil || k["algorithm"] != "ES256" || c1["certificate"] != nil {
		t.Errorf("created key-dev: got %v, want its ES256 key and no certificate", c1)
	}
	r = e.do("GET", "/v1/tenants/acme/devices/cert-dev/certificates", u.token, nil)
	if items := asSlice(r.json()["items"]); len(items) != 1 || items[0].(map[string]any)["subject"] != "CN=cert-dev" {
		t.Errorf("cert-dev's certificates: %s", r.body)
	}
	r = e.do("GET", "/v1/tenants/acme/devices/key-dev/keys", u.token, nil)
	if items := asSlice(r.json()["items"]); len(items) != 1 || strings.TrimSpace(items[0].(map[string]any)["public_key"].(string)) != strings.TrimSpace(keyPEM) {
		t.Errorf("key-dev's keys: %s", r.body)
	}
	for _, p := range []string{"/v1/tenants/other/devices/cert-dev/certificates", "/v1/tenants/other/devices/key-dev/keys"} {
		if r := e.do("GET", p, u.token, nil); len(asSlice(r.json()["items"])) != 0 {
			t.Errorf("%s after acme's import: %s", p, r.body)
		}
	}

	// The imported certificate and key admit their device, and only it.
	if code, err := dialTLS(cert, "acme/cert-dev"); err != nil || code != 0 {
		t.Errorf("connect with the imported certificate: CONNACK %#x (%v), want 0", code, err)
	}
	if code, err := dialTLS(cert, "other/cert-dev"); err == nil && code == 0 {
		t.Error("acme's imported certificate opens other/cert-dev")
	}
	c, err := e.dialMQTT(t, "acme/key-dev", deviceJWT(t, key, "acme"), "key-dev", paho.ClientConfig{})
	if err != nil {
		t.Errorf("connect with a token signed by the imported key: %v", err)
	} else {
		c.Disconnect(&paho.Disconnect{})
	}
	if c, err := e.dialMQTT(t, "other/key-dev", deviceJWT(t, key, "other"), "key-dev", paho.ClientConfig{}); err == nil {
		c.Disconnect(&paho.Disconnect{})
		t.Error("acme's imported key opens other/key-dev")
	}

	// NDJSON takes the same two fields.
	_, certPEM2 := selfSignedClient(t, "nd-1")
	line := func(m map[string]any) string {
		j, _ := json.Marshal(m)
		return string(j) + "\n"
	}
	nd := line(map[string]any{"name": "nd-1", "certificate": certPEM2, "public_key": keyPEM}) +
		line(map[string]any{"name": "nd-2", "certificate": "junk"})
	r = e.importReq(u.token, "?mode=rows", "application/x-ndjson", "", nd)
	want(t, r, 200, "NDJSON with credentials")
	if got := rowErrors(r); got != "2:certificate:invalid" {
		t.Errorf("NDJSON errors: got %q, want 2:certificate:invalid", got)
	}
	if created := asSlice(r.json()["created"]); len(created) != 1 || created[0].(map[string]any)["certificate"] == nil || created[0].(map[string]any)["key"] == nil {
		t.Errorf("NDJSON created: %s", r.body)
	}
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
