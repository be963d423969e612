package transport

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

func testCert(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// TestForwardHeader: what a node writes, the home reads back — the
// device's address (IPv4, IPv6, none), SNI and certificate chain; a header
// signed with another key, changed in one byte, too old, or unsigned is
// refused.
func TestForwardHeader(t *testing.T) {
	key := []byte("the nodes' key")
	now := time.Now()
	leaf, ca := testCert(t, "d1"), testCert(t, "acme CA")
	for _, f := range []Forwarded{
		{Origin: "n1", Remote: &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 40000}},
		{Origin: "n2", Remote: &net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 1}, TLS: true, ServerName: "acme.mqtt.example"},
		{Origin: "n3", TLS: true, PeerCertificates: []*x509.Certificate{leaf, ca}},
	} {
		var b bytes.Buffer
		if err := WriteForwardHeader(&b, f, key, now); err != nil {
			t.Fatal(err)
		}
		b.WriteString("CONNECT")
		r := bufio.NewReader(&b)
		got, err := readForwardHeader(r, key, now.Add(time.Second))
		if err != nil {
			t.Fatalf("%s: %v", f.Origin, err)
		}
		rest, _ := io.ReadAll(r)
		if string(rest) != "CONNECT" {
			t.Errorf("%s: the stream after the header is %q", f.Origin, rest)
		}
		if got.Origin != f.Origin || got.TLS != f.TLS || got.ServerName != f.ServerName || len(got.PeerCertificates) != len(f.PeerCertificates) {
			t.Errorf("%s: read %+v", f.Origin, got)
		}
		for i, c := range got.PeerCertificates {
			if !c.Equal(f.PeerCertificates[i]) {
				t.Errorf("%s: certificate %d differs", f.Origin, i)
			}
		}
		switch {
		case f.Remote == nil && got.Remote != nil, f.Remote != nil && (got.Remote == nil || got.Remote.String() != f.Remote.String()):
			t.Errorf("%s: remote %v, want %v", f.Origin, got.Remote, f.Remote)
		}
	}

	f := Forwarded{Origin: "n1", Remote: &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 40000}, TLS: true, PeerCertificates: []*x509.Certificate{leaf}}
	var good bytes.Buffer
	WriteForwardHeader(&good, f, key, now)
	read := func(b []byte, at time.Time) error {
		_, err := readForwardHeader(bufio.NewReader(bytes.NewReader(b)), key, at)
		return err
	}
	if err := read(good.Bytes(), now); err != nil {
		t.Fatal(err)
	}
	var other bytes.Buffer
	WriteForwardHeader(&other, f, []byte("another key"), now)
	if err := read(other.Bytes(), now); !errors.Is(err, ErrForwardHeader) {
		t.Errorf("another key: %v", err)
	}
	for _, i := range []int{17, 30, good.Len() / 2, good.Len() - 40} {
		b := bytes.Clone(good.Bytes())
		b[i] ^= 1
		if err := read(b, now); !errors.Is(err, ErrForwardHeader) {
			t.Errorf("byte %d changed: %v", i, err)
		}
	}
	if err := read(good.Bytes(), now.Add(3*time.Minute)); !errors.Is(err, ErrForwardHeader) {
		t.Errorf("a 3-minute-old header: %v", err)
	}
	if err := read(good.Bytes(), now.Add(-3*time.Minute)); !errors.Is(err, ErrForwardHeader) {
		t.Errorf("a header from 3 minutes ahead: %v", err)
	}
	// A plain PROXY header, as a balancer sends it, is not a forward.
	if err := read([]byte(proxyV2(1, 0x11, []byte{203, 0, 113, 7, 10, 0, 0, 1, 0x9c, 0x40, 0x07, 0x5b})), now); !errors.Is(err, ErrForwardHeader) {
		t.Errorf("an unsigned PROXY header: %v", err)
	}
	if err := read([]byte("\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c"), now); !errors.Is(err, ErrForwardHeader) {
		t.Errorf("a bare CONNECT: %v", err)
	}
	if err := read(good.Bytes()[:good.Len()-5], now); !errors.Is(err, ErrForwardHeader) {
		t.Errorf("a truncated header: %v", err)
	}
}

// TestForwardListener: a forwarded connection reports the device's
// address, TLS state and origin; a connection whose header does not verify
// fails its first read.
func TestForwardListener(t *testing.T) {
	key := []byte("the nodes' key")
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := ForwardListener(raw, key, time.Second)
	defer ln.Close()
	leaf := testCert(t, "d1")
	send := func(k []byte) {
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		WriteForwardHeader(c, Forwarded{Origin: "n1", Remote: &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 40000},
			TLS: true, ServerName: "acme.mqtt.example", PeerCertificates: []*x509.Certificate{leaf}}, k, time.Now())
		c.Write([]byte("hello"))
	}
	go send(key)
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if c.RemoteAddr().String() != "203.0.113.7:40000" || ForwardOrigin(c) != "n1" || ServerName(c) != "acme.mqtt.example" {
		t.Errorf("remote %s, origin %q, server name %q", c.RemoteAddr(), ForwardOrigin(c), ServerName(c))
	}
	if chain := PeerCertificates(c); len(chain) != 1 || !chain[0].Equal(leaf) {
		t.Errorf("peer certificates: %v", chain)
	}
	c.Close()

	go send([]byte("a guess"))
	c, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Read(buf); !errors.Is(err, ErrForwardHeader) {
		t.Errorf("a header signed with a guessed key: read %v", err)
	}
	if PeerCertificates(c) != nil || ForwardOrigin(c) != "" {
		t.Error("a refused header's certificates or origin were believed")
	}
	// A connection straight from a device has no origin.
	plain, _ := net.Pipe()
	if ForwardOrigin(plain) != "" {
		t.Error("a plain connection has an origin")
	}
}

// TestAnnouncedForwardHeaderNotHeld: a stranger on the forwarding port who
// sends the 16 bytes of a header announcing 65,535 more, and nothing
// else, makes each connection hold what it sent, not what it announced,
// until the header's deadline closes it. (Each held 64 KiB before: 4,096
// times what it cost the stranger, over every slot the port's waiting
// pool has.) A whole header larger than the first allocation still
// verifies.
func TestAnnouncedForwardHeaderNotHeld(t *testing.T) {
	key := []byte("the nodes' key")
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := ForwardListener(raw, key, 3*time.Second)
	defer ln.Close()

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	const n = 200
	announce := append(append([]byte{}, proxyV2Sig...), 0x21, 0x11, 0xff, 0xff)
	reading := make(chan net.Conn, n)
	failed := make(chan error, n)
	for range n {
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(announce); err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		go func() {
			reading <- s
			_, err := s.Read(make([]byte, 1))
			failed <- err
		}()
	}
	for range n {
		<-reading
	}
	time.Sleep(300 * time.Millisecond) // for each to read its 16 bytes and wait for the rest
	runtime.GC()
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	if per := (int64(during.HeapInuse) - int64(before.HeapInuse)) / n; per > 16<<10 {
		t.Errorf("each connection that announced a 64 KiB header holds %d KiB of heap; want under 16 KiB", per>>10)
	}
	for range n {
		select {
		case err := <-failed:
			if !errors.Is(err, ErrForwardHeader) {
				t.Fatalf("a header announced and never sent: read %v, want ErrForwardHeader", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a header announced and never sent is still waited for past its deadline")
		}
	}

	// A header of some 40 KiB (a long chain) arrives in pieces and verifies.
	var chain []*x509.Certificate
	for i := range 60 {
		chain = append(chain, testCert(t, fmt.Sprintf("link %d %s", i, strings.Repeat("x", 200))))
	}
	var head bytes.Buffer
	if err := WriteForwardHeader(&head, Forwarded{Origin: "n1", TLS: true, PeerCertificates: chain}, key, time.Now()); err != nil {
		t.Fatal(err)
	}
	if head.Len() < 16<<10 {
		t.Fatalf("the long header has %d bytes; want more than 16 KiB", head.Len())
	}
	go func() {
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		for b := head.Bytes(); len(b) > 0; b = b[min(len(b), 1000):] {
			c.Write(b[:min(len(b), 1000)])
			time.Sleep(time.Millisecond)
		}
		c.Write([]byte("hello"))
		io.Copy(io.Discard, c)
	}()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("after a long header: read %q, %v", buf, err)
	}
	if got := PeerCertificates(s); len(got) != len(chain) {
		t.Errorf("got %d certificates, want %d", len(got), len(chain))
	}
}
