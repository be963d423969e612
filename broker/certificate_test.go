package broker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/transport"
)

// issuer signs test certificates.
type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newIssuer(t *testing.T, cn string) issuer {
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
	return issuer{cert, key}
}

func (i issuer) pem() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: i.cert.Raw}))
}

// leaf makes a client certificate signed by i (or by itself if i is
// zero), valid from notBefore to notAfter.
func (i issuer) leaf(t *testing.T, cn string, uri string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: notBefore, NotAfter: notAfter, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if uri != "" {
		u, _ := url.Parse(uri)
		tmpl.URIs = []*url.URL{u}
	}
	parent, signer := tmpl, key
	if i.cert != nil {
		parent, signer = i.cert, i.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// serveTLS gives the hub a TLS listener with a development certificate for
// localhost, and returns its address and the roots that trust it.
func serveTLS(t testing.TB, hub *broker.Hub) (addr string, roots *x509.CertPool) {
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
	go hub.Serve(tls.NewListener(raw, hub.TLSConfig(transport.ServerConfig(server))))
	roots = x509.NewCertPool()
	caPEM, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots.AppendCertsFromPEM(caPEM)
	return raw.Addr().String(), roots
}

// TestClientCertificates: over TLS, a device connects without a password
// with a client certificate that chains to its tenant's CA and names it
// (CN or URI SAN), or that is pinned to it; every other certificate is
// refused with the bad-credentials code; removing the CA or unpinning the
// certificate ends the connections they admitted.
func TestClientCertificates(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.tenant("other")
	s.device("acme", "d1", tenants.ClientIDsAny) // two connections at once below
	s.device("other", "d1")
	tlsAddr, roots := serveTLS(t, s.hub)

	acmeCA, otherCA, strangerCA := newIssuer(t, "acme CA"), newIssuer(t, "other CA"), newIssuer(t, "stranger CA")
	ca, err := s.store.CreateCA(ctx, "acme", tenants.CAInput{Certificate: acmeCA.pem()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.CreateCA(ctx, "other", tenants.CAInput{Certificate: otherCA.pem()}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	valid := func(i issuer, cn, uri string) tls.Certificate {
		return i.leaf(t, cn, uri, now.Add(-time.Hour), now.Add(time.Hour))
	}
	pinnedCert := issuer{}.leaf(t, "anything", "", now.Add(-time.Hour), now.Add(time.Hour))
	pin, err := s.store.CreateDeviceCertificate(ctx, "acme", "d1", tenants.DeviceCertificateInput{Fingerprint: tenants.Fingerprint(pinnedCert.Certificate[0])})
	if err != nil {
		t.Fatal(err)
	}

	dial := func(cert *tls.Certificate, username string, clientID ...string) (*v5, byte, error) {
		id := "d1"
		if len(clientID) > 0 {
			id = clientID[0]
		}
		conn, err := tls.Dial("tcp", tlsAddr, &tls.Config{RootCAs: roots, ServerName: "localhost",
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				if cert == nil {
					return &tls.Certificate{}, nil
				}
				return cert, nil
			}})
		if err != nil {
			return nil, 0, err
		}
		c := &v5{conn: conn, msgs: make(chan *paho.Publish, 10), discs: make(chan *paho.Disconnect, 1), closed: make(chan struct{})}
		c.Client = paho.NewClient(paho.ClientConfig{Conn: conn, OnServerDisconnect: func(d *paho.Disconnect) { c.discs <- d }})
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ca, err := c.Connect(cctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true, Username: username, UsernameFlag: true})
		if ca == nil {
			return nil, 0, err
		}
		if ca.ReasonCode == 0 {
			t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
		}
		return c, ca.ReasonCode, nil
	}
	for _, tc := range []struct {
		name     string
		cert     tls.Certificate
		username string
		want     byte
	}{
		{"CN names the device", valid(acmeCA, "d1", ""), "acme/d1", 0},
		{"URI SAN names the device", valid(acmeCA, "someone", "roost://acme/d1"), "acme/d1", 0},
		{"pinned to the device", pinnedCert, "acme/d1", 0},
		{"expired", acmeCA.leaf(t, "d1", "", now.Add(-2*time.Hour), now.Add(-time.Hour)), "acme/d1", 0x86},
		{"not yet valid", acmeCA.leaf(t, "d1", "", now.Add(time.Hour), now.Add(2*time.Hour)), "acme/d1", 0x86},
		{"a CA nobody registered", valid(strangerCA, "d1", ""), "acme/d1", 0x86},
		{"another tenant's CA", valid(otherCA, "d1", ""), "acme/d1", 0x86},
		{"names another device", valid(acmeCA, "d2", ""), "acme/d1", 0x86},
		{"URI SAN of another tenant", valid(acmeCA, "x", "roost://other/d1"), "acme/d1", 0x86},
		{"acme's certificate as other/d1", valid(acmeCA, "d1", ""), "other/d1", 0x86},
		{"pinned to acme/d1, presented as other/d1", pinnedCert, "other/d1", 0x86},
	} {
		_, code, err := dial(&tc.cert, tc.username)
		if err != nil || code != tc.want {
			t.Errorf("%s: CONNACK %#x (%v), want %#x", tc.name, code, err, tc.want)
		}
	}
	if _, code, _ := dial(nil, "acme/d1"); code != 0x86 {
		t.Errorf("no certificate and no password: %#x", code)
	}

	// Removing the CA ends what it admitted; the pinned one stays.
	byCA, code, err := dial(ptr(valid(acmeCA, "d1", "")), "acme/d1")
	if err != nil || code != 0 {
		t.Fatalf("connect by CA: %#x %v", code, err)
	}
	byPin, code, err := dial(&pinnedCert, "acme/d1", "d1-pinned")
	if err != nil || code != 0 {
		t.Fatalf("connect pinned: %#x %v", code, err)
	}
	if err := s.store.DeleteCA(ctx, "acme", ca.ID); err != nil {
		t.Fatal(err)
	}
	expectKick := func(c *v5, what string) {
		t.Helper()
		select {
		case d := <-c.discs:
			if d.ReasonCode != 0x98 {
				t.Errorf("%s: DISCONNECT %#x, want 0x98", what, d.ReasonCode)
			}
		case <-time.After(10 * time.Second):
			logs := s.logs.String()
			t.Errorf("%s: still connected; the hub's log ends:\n%s", what, logs[max(0, len(logs)-3000):])
		}
	}
	expectKick(byCA, "CA removed")
	select {
	case d := <-byPin.discs:
		t.Errorf("removing the CA ended the pinned connection: %#x", d.ReasonCode)
	case <-time.After(300 * time.Millisecond):
	}
	if err := s.store.DeleteDeviceCertificate(ctx, "acme", "d1", pin.ID); err != nil {
		t.Fatal(err)
	}
	expectKick(byPin, "certificate unpinned")
}

func ptr[T any](v T) *T { return &v }
