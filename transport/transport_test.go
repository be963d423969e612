package transport

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func trust(t *testing.T, caFile string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("ca.pem holds no certificate")
	}
	return pool
}

// TestDevCertificatesMadeOnceAndTrusted: the server certificate chains to
// ca.pem for localhost, 127.0.0.1 and ::1, the CA key is private, and a
// second call keeps every file.
func TestDevCertificatesMadeOnceAndTrusted(t *testing.T) {
	dir := t.TempDir()
	f, err := DevCertificates(dir)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: trust(t, f.CA)}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: trust(t, f.CA)}); err == nil {
		t.Error("the development certificate is valid for example.com")
	}
	for _, key := range []string{filepath.Join(dir, "ca-key.pem"), f.Key} {
		if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", key, fi.Mode(), err)
		}
	}
	before, _ := os.ReadFile(f.Cert)
	ca, _ := os.ReadFile(f.CA)
	if _, err := DevCertificates(dir); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(f.Cert)
	ca2, _ := os.ReadFile(f.CA)
	if !bytes.Equal(before, after) || !bytes.Equal(ca, ca2) {
		t.Error("a second call replaced certificates that were still good")
	}
}

// TestCertificateReloadsWhenFilesChange: a new pair written over the files
// is served after at most a second, without a restart; a broken pair
// leaves the previous one in use and is logged once.
func TestCertificateReloadsWhenFilesChange(t *testing.T) {
	dir := t.TempDir()
	first, err := DevCertificates(filepath.Join(dir, "first"))
	if err != nil {
		t.Fatal(err)
	}
	second, err := DevCertificates(filepath.Join(dir, "second"))
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	install := func(from DevFiles, at time.Time) {
		for src, dst := range map[string]string{from.Cert: certFile, from.Key: keyFile} {
			b, _ := os.ReadFile(src)
			os.WriteFile(dst, b, 0o600)
			os.Chtimes(dst, at, at)
		}
	}
	install(first, time.Now().Add(-time.Hour))
	var logs bytes.Buffer
	c, err := LoadCertificate(certFile, keyFile, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c.now = func() time.Time { return now }
	serial := func() string {
		cert, err := c.Get(nil)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(cert.Certificate[0])
		return leaf.SerialNumber.String()
	}
	was := serial()
	install(second, time.Now())
	if serial() != was {
		t.Error("reloaded within the same second")
	}
	now = now.Add(time.Second)
	is := serial()
	if is == was {
		t.Fatal("the new certificate was not served")
	}
	os.WriteFile(certFile, []byte("not a certificate"), 0o600)
	os.Chtimes(certFile, time.Now().Add(time.Minute), time.Now().Add(time.Minute))
	for range 3 {
		now = now.Add(time.Second)
		if serial() != is {
			t.Fatal("a broken pair replaced a good one")
		}
	}
	if n := strings.Count(logs.String(), "not reloaded"); n != 1 {
		t.Errorf("the broken pair was logged %d times:\n%s", n, logs.String())
	}
}

// TestSplitByALPNAndFirstByte: on one TLS listener, ALPN mqtt and a bare
// CONNECT go to the MQTT side, HTTP to the web side, with every byte the
// client sent.
func TestSplitByALPNAndFirstByte(t *testing.T) {
	f, err := DevCertificates(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := LoadCertificate(f.Cert, f.Key, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mqtt, web := Split(tls.NewListener(raw, ServerConfig(cert)), 2*time.Second)
	defer mqtt.Close()
	for _, tc := range []struct {
		alpn  []string
		send  string
		wantM bool
	}{
		{[]string{"mqtt"}, "\x10\x0cMQTT", true},
		{[]string{"mqtt"}, "anything at all", true},
		{nil, "\x10\x0cMQTT", true},
		{[]string{"http/1.1"}, "GET /mqtt HTTP/1.1\r\n", false},
		{nil, "GET /mqtt HTTP/1.1\r\n", false},
	} {
		c, err := tls.Dial("tcp", raw.Addr().String(), &tls.Config{RootCAs: trust(t, f.CA), ServerName: "localhost", NextProtos: tc.alpn})
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(tc.send))
		side := web
		if tc.wantM {
			side = mqtt
		}
		got := make(chan net.Conn, 1)
		go func() {
			s, err := side.Accept()
			if err == nil {
				got <- s
			}
		}()
		select {
		case s := <-got:
			b := make([]byte, len(tc.send))
			s.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.ReadFull(s, b); err != nil || string(b) != tc.send {
				t.Errorf("%v %q: read %q, %v", tc.alpn, tc.send, b, err)
			}
			s.Close()
		case <-time.After(3 * time.Second):
			t.Errorf("%v %q: not routed to the %s side", tc.alpn, tc.send, map[bool]string{true: "MQTT", false: "web"}[tc.wantM])
		}
		c.Close()
	}
	// A client that never finishes the handshake is dropped at the timeout
	// and holds up nobody.
	idle, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	c, err := tls.Dial("tcp", raw.Addr().String(), &tls.Config{RootCAs: trust(t, f.CA), ServerName: "localhost", NextProtos: []string{"mqtt"}})
	if err != nil {
		t.Fatalf("a handshake behind a silent client: %v", err)
	}
	c.Close()
	if s, err := mqtt.Accept(); err != nil {
		t.Fatal(err)
	} else {
		s.Close()
	}
	idle.SetReadDeadline(time.Now().Add(4 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Error("the silent client was sent something")
	}
}

// TestWebSocketStream: MQTT bytes cross binary messages both ways, however
// they are cut; a text message ends the connection; other paths are 404.
func TestWebSocketStream(t *testing.T) {
	srv := httptest.NewServer(WebSocket(func(c net.Conn) {
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			c.Write([]byte(strings.ToUpper(line)))
		}
	}, nil))
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + WebSocketPath
	ws, resp, err := websocket.DefaultDialer.Dial(url, http.Header{"Sec-WebSocket-Protocol": {"mqtt"}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Sec-WebSocket-Protocol") != "mqtt" {
		t.Errorf("subprotocol %q", resp.Header.Get("Sec-WebSocket-Protocol"))
	}
	c := NewWebSocketConn(ws)
	// One line across three messages, then two lines in one.
	for _, part := range []string{"he", "ll", "o\n", "a\nb\n"} {
		ws.WriteMessage(websocket.BinaryMessage, []byte(part))
	}
	r := bufio.NewReader(c)
	for _, want := range []string{"HELLO\n", "A\n", "B\n"} {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if got, err := r.ReadString('\n'); got != want || err != nil {
			t.Errorf("read %q, %v; want %q", got, err, want)
		}
	}
	ws.WriteMessage(websocket.TextMessage, []byte("x\n"))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Error("the connection outlived a text message")
	}
	if resp, err := http.Get(srv.URL + "/other"); err != nil || resp.StatusCode != 404 {
		t.Errorf("GET /other: %v %v", resp, err)
	}
	if resp, err := http.Get(srv.URL + WebSocketPath); err != nil || resp.StatusCode != 400 {
		t.Errorf("GET /mqtt without an upgrade: %v %v", resp, err)
	}
}

func TestTenantFromServerName(t *testing.T) {
	for name, want := range map[string]string{
		"acme.mqtt.example.com":      "acme",
		"ACME.Mqtt.Example.com":      "acme",
		"acme.mqtt.example.com.":     "acme",
		"a.b.mqtt.example.com":       "",
		"mqtt.example.com":           "",
		".mqtt.example.com":          "",
		"acme.mqtt.example.com.evil": "",
		"acmemqtt.example.com":       "",
		"":                           "",
	} {
		if got := TenantFromServerName(name, "mqtt.example.com"); got != want {
			t.Errorf("%q: %q, want %q", name, got, want)
		}
	}
	if got := TenantFromServerName("acme.localhost", ""); got != "" {
		t.Errorf("without a domain: %q", got)
	}
}

// failingListener's Accept fails with err the first n times.
type failingListener struct {
	net.Listener
	err error
	n   atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

// TestSplitWaitsOutDescriptorShortage: a shared listener whose accept
// fails for want of descriptors (EMFILE, ENFILE) goes on serving once
// they are back; one closed ends both halves.
func TestSplitWaitsOutDescriptorShortage(t *testing.T) {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE} {
		raw, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		fl := &failingListener{Listener: raw, err: &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", e)}}
		fl.n.Store(5)
		mqtt, _ := Split(fl, 2*time.Second)
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("\x10\x0cMQTT"))
		got := make(chan error, 1)
		go func() {
			s, err := mqtt.Accept()
			if err == nil {
				s.Close()
			}
			got <- err
		}()
		select {
		case err := <-got:
			if err != nil {
				t.Errorf("%v: the MQTT side after the shortage: %v", e, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%v: nothing accepted after the shortage", e)
		}
		c.Close()
		mqtt.Close()
		if _, err := mqtt.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("%v: Accept after Close: %v, want net.ErrClosed", e, err)
		}
	}
}

func TestAcceptRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EMFILE)}, true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ECONNABORTED)}, true},
		{net.ErrClosed, false},
		{errors.New("something else"), false},
	} {
		if got := AcceptRetryable(tc.err); got != tc.want {
			t.Errorf("AcceptRetryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
