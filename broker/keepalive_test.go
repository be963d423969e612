package broker_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
)

// silent connects with a raw CONNECT asking for keepalive, reads the
// CONNACK and then sends nothing. It returns the CONNACK and a channel
// that gets how long after it the server closed the connection.
func silent(t *testing.T, addr string, version byte, username, password, clientID string, keepalive uint16) (packets.Packet, <-chan time.Duration) {
	t.Helper()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: keepalive, ClientIdentifier: clientID,
			UsernameFlag: true, Username: []byte(username), PasswordFlag: true, Password: []byte(password),
		},
	}
	var b bytes.Buffer
	if err := pk.ConnectEncode(&b); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	hb, err := r.ReadByte()
	if err != nil {
		t.Fatalf("no CONNACK: %v", err)
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatal(err)
	}
	ack := packets.Packet{ProtocolVersion: version}
	if err := ack.FixedHeader.Decode(hb); err != nil || ack.FixedHeader.Type != packets.Connack {
		t.Fatalf("first packet %#x, want a CONNACK", hb)
	}
	if err := ack.ConnackDecode(body); err != nil || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x, %v", ack.ReasonCode, err)
	}
	start := time.Now()
	closed := make(chan time.Duration, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		io.Copy(io.Discard, r)
		closed <- time.Since(start)
	}()
	return ack, closed
}

// TestMaxKeepalive: a client asking a longer keep-alive than its tenant's
// max_keepalive, or none (0), is held to max_keepalive: MQTT 5 is told in
// its CONNACK (Server Keep Alive) and keeps to it; a silent connection of
// either protocol is closed after 1.5 × max_keepalive. Another tenant's
// max_keepalive is its own.
func TestMaxKeepalive(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.setQuota("acme", "max_keepalive", 2)
	s.tenant("beta")
	s.setQuota("beta", "max_keepalive", 60)

	for i, tc := range []struct {
		asks uint16
		told uint16 // 0: no Server Keep Alive
	}{{0, 2}, {3, 2}, {600, 2}, {65535, 2}, {1, 0}, {2, 0}} {
		name := fmt.Sprintf("v5-%d", i)
		c := mustV5(t, s.addr, user("acme", name), s.device("acme", name), name, func(c *paho.Connect) { c.KeepAlive = tc.asks })
		got := c.connack.Properties.ServerKeepAlive
		switch {
		case tc.told == 0 && got != nil:
			t.Errorf("asking keep-alive %d: Server Keep Alive %d, want none", tc.asks, *got)
		case tc.told != 0 && (got == nil || *got != tc.told):
			t.Errorf("asking keep-alive %d: Server Keep Alive %v, want %d", tc.asks, got, tc.told)
		}
		c.Disconnect(&paho.Disconnect{})
	}

	// Told 2, paho pings every 2 s and stays connected well past 3 s.
	kept := mustV5(t, s.addr, user("acme", "kept"), s.device("acme", "kept"), "kept", func(c *paho.Connect) { c.KeepAlive = 0 })
	// Silent connections, asking none or more than 2, are closed after 3 s:
	// MQTT 5 and 3.1.1 (which cannot be told).
	var closing []<-chan time.Duration
	for i, tc := range []struct {
		version byte
		asks    uint16
	}{{5, 0}, {5, 600}, {4, 0}, {4, 600}} {
		name := fmt.Sprintf("silent-%d", i)
		ack, closed := silent(t, s.addr, tc.version, user("acme", name), s.device("acme", name), name, tc.asks)
		if tc.version == 5 && (!ack.Properties.ServerKeepAliveFlag || ack.Properties.ServerKeepAlive != 2) {
			t.Errorf("raw MQTT 5 asking %d: Server Keep Alive %d (flag %t), want 2", tc.asks, ack.Properties.ServerKeepAlive, ack.Properties.ServerKeepAliveFlag)
		}
		closing = append(closing, closed)
	}
	// paho.mqtt.golang with keep-alive 0 sends no PINGREQ: it is closed too.
	quiet3 := mustV3(t, s.addr, user("acme", "quiet3"), s.device("acme", "quiet3"), "quiet3", true, func(o *paho3.ClientOptions) { o.SetKeepAlive(0) })
	// beta's max_keepalive is 60: its silent connection asking none stays,
	// and is told 60.
	ack, betaClosed := silent(t, s.addr, 5, user("beta", "silent"), s.device("beta", "silent"), "silent", 0)
	if ack.Properties.ServerKeepAlive != 60 {
		t.Errorf("beta: Server Keep Alive %d, want 60", ack.Properties.ServerKeepAlive)
	}
	_, beta3Closed := silent(t, s.addr, 4, user("beta", "silent3"), s.device("beta", "silent3"), "silent3", 0)

	for i, closed := range closing {
		select {
		case after := <-closed:
			if after < 2500*time.Millisecond {
				t.Errorf("silent connection %d closed after %v, before 1.5 × max_keepalive", i, after)
			}
		case <-time.After(8 * time.Second):
			t.Errorf("silent connection %d still open after 8 s, with max_keepalive 2", i)
		}
	}
	if !quiet3.lostWithin(3 * time.Second) {
		t.Error("a 3.1.1 client with keep-alive 0 and no pings stayed connected past 1.5 × max_keepalive")
	}
	select {
	case after := <-betaClosed:
		t.Errorf("beta's silent MQTT 5 connection closed after %v: acme's max_keepalive reached it", after)
	case after := <-beta3Closed:
		t.Errorf("beta's silent 3.1.1 connection closed after %v: acme's max_keepalive reached it", after)
	default:
	}
	kept.barrier(t)
	select {
	case <-kept.closed:
		t.Error("an MQTT 5 client keeping to the Server Keep Alive was disconnected")
	default:
	}
}
