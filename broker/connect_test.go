package broker_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// CONNECT flags.
const (
	flagUsername = 0x80
	flagPassword = 0x40
	flagClean    = 0x02
)

// rawConnect frames a CONNECT by hand (protocol name MQTT, keepalive 30,
// MQTT 5 without properties) with the flags and payload fields given, for
// what client libraries will not send.
func rawConnect(version, flags byte, payload ...[]byte) []byte {
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', version, flags, 0, 30}
	if version == 5 {
		body = append(body, 0)
	}
	for _, p := range payload {
		body = append(body, p...)
	}
	return append(frameHeader(0x10, len(body)), body...)
}

// frameHeader is a fixed header with its remaining length.
func frameHeader(b0 byte, n int) []byte {
	h := []byte{b0}
	for {
		b := byte(n % 128)
		if n /= 128; n > 0 {
			b |= 0x80
		}
		h = append(h, b)
		if n == 0 {
			return h
		}
	}
}

// field is a length-prefixed string or binary field.
func field(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }

// connackCode reads the reason (MQTT 5) or return code (3.1.1) of the
// CONNACK at the start of got; ok is false when got is not one.
func connackCode(got []byte, version byte) (code byte, ok bool) {
	if version == 5 {
		if len(got) >= 5 && got[0] == 0x20 && got[1] >= 3 {
			return got[3], true
		}
		return 0, false
	}
	if len(got) >= 4 && got[0] == 0x20 && got[1] == 2 {
		return got[3], true
	}
	return 0, false
}

// TestUsernameAndPasswordFields: a CONNECT whose username or password is
// empty, missing or cut short gets the bad-credentials code when it is
// well formed (an empty password is: MQTT allows 0 bytes), and the
// malformed-packet code (3.1.1: "the data in the user name or password is
// malformed", 0x04) when a field its flags announce is not there; never
// the code of an unsupported protocol version.
func TestUsernameAndPasswordFields(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	secret := s.device("acme", "d1")
	cid := field("d1")
	cases := []struct {
		name    string
		flags   byte
		payload [][]byte
		v5, v3  byte
	}{
		{"empty password", flagUsername | flagPassword | flagClean, [][]byte{cid, field("acme/d1"), field("")}, 0x86, 0x04},
		{"empty username", flagUsername | flagPassword | flagClean, [][]byte{cid, field(""), field(secret)}, 0x86, 0x04},
		{"empty username and password", flagUsername | flagPassword | flagClean, [][]byte{cid, field(""), field("")}, 0x86, 0x04},
		{"no username or password", flagClean, [][]byte{cid}, 0x86, 0x04},
		{"password without username", flagPassword | flagClean, [][]byte{cid, field(secret)}, 0x86, 0x04},
		{"username flag, no username", flagUsername | flagClean, [][]byte{cid}, 0x81, 0x04},
		{"username flag, username cut short", flagUsername | flagClean, [][]byte{cid, {0, 9, 'a', 'c'}}, 0x81, 0x04},
		{"password flag, no password", flagUsername | flagPassword | flagClean, [][]byte{cid, field("acme/d1")}, 0x81, 0x04},
		{"password flag, password cut short", flagUsername | flagPassword | flagClean, [][]byte{cid, field("acme/d1"), {0, 9, 'x'}}, 0x81, 0x04},
	}
	for _, tc := range cases {
		for _, version := range []byte{5, 4} {
			t.Run(fmt.Sprintf("%s v%d", tc.name, version), func(t *testing.T) {
				want := tc.v3
				if version == 5 {
					want = tc.v5
				}
				got, closed := exchange(t, s.addr, 5*time.Second, rawConnect(version, tc.flags, tc.payload...))
				code, ok := connackCode(got, version)
				if !ok || code != want || !closed {
					t.Errorf("got % x (closed %v), want a CONNACK with 0x%02x and the connection closed", got, closed, want)
				}
			})
		}
	}
	// An unsupported protocol version still gets 0x01, in 3.1.1's form.
	got, _ := exchange(t, s.addr, 5*time.Second, rawConnect(6, flagUsername|flagPassword|flagClean, cid, field("acme/d1"), field(secret)))
	if !bytes.Equal(got, []byte{0x20, 2, 0, 0x01}) {
		t.Errorf("protocol version 6: got % x, want 20 02 00 01", got)
	}
	// The right secret still works after all that.
	for _, version := range []byte{5, 4} {
		got, _ := exchange(t, s.addr, time.Second, rawConnect(version, flagUsername|flagPassword|flagClean, cid, field("acme/d1"), field(secret)))
		if code, ok := connackCode(got, version); !ok || code != 0 {
			t.Errorf("right secret, v%d: got % x, want CONNACK 0", version, got)
		}
	}
}

// TestEmptyPasswordWithCertificate: a device that proves itself with a
// client certificate may send an empty password with its flag set (MQTT
// allows it): it is admitted, and its broker takes the connection.
func TestEmptyPasswordWithCertificate(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.device("acme", "d1")
	tlsAddr, roots := serveTLS(t, s.hub)
	ca := newIssuer(t, "acme CA")
	if _, err := s.store.CreateCA(ctx, "acme", tenants.CAInput{Certificate: ca.pem()}); err != nil {
		t.Fatal(err)
	}
	cert := ca.leaf(t, "d1", "", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	for _, version := range []byte{5, 4} {
		conn, err := tls.Dial("tcp", tlsAddr, &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{cert}})
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(rawConnect(version, flagUsername|flagPassword|flagClean, field("d1"), field("acme/d1"), field("")))
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, _ := conn.Read(buf)
		if code, ok := connackCode(buf[:n], version); !ok || code != 0 {
			t.Errorf("v%d, certificate and an empty password: got % x, want CONNACK 0", version, buf[:n])
		}
		// The session works: a PINGREQ is answered.
		conn.Write([]byte{0xC0, 0})
		n, _ = conn.Read(buf)
		if !bytes.Equal(buf[:n], []byte{0xD0, 0}) {
			t.Errorf("v%d: PINGREQ answered % x, want d0 00", version, buf[:n])
		}
		conn.Close()
	}
}
