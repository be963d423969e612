package broker_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/transport"
)

// rawPublish encodes a v5 PUBLISH by hand, with its properties as given:
// mochi's encoder leaves out a property that is zero.
func rawPublish(qos byte, id uint16, topic string, props []byte, payload string) []byte {
	var body []byte
	body = binary.BigEndian.AppendUint16(body, uint16(len(topic)))
	body = append(body, topic...)
	if qos > 0 {
		body = binary.BigEndian.AppendUint16(body, id)
	}
	body = binary.AppendUvarint(body, uint64(len(props)))
	body = append(body, props...)
	body = append(body, payload...)
	out := []byte{packets.Publish<<4 | qos<<1}
	out = binary.AppendUvarint(out, uint64(len(body)))
	return append(out, body...)
}

// topicAlias is the Topic Alias property (0x23).
func topicAlias(alias uint16) []byte { return binary.BigEndian.AppendUint16([]byte{0x23}, alias) }

// lateReader is a client's connection whose reader runs behind its
// writer, as a reader thread does on a busy machine: it picks up input
// every readEvery.
type lateReader struct{ net.Conn }

const readEvery = 10 * time.Millisecond

func (c lateReader) Read(p []byte) (int, error) {
	time.Sleep(readEvery)
	return c.Conn.Read(p)
}

// dialWriting connects a v5 client over TCP; see connectWriting.
func dialWriting(t *testing.T, addr, username, password, clientID string) *raw {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return connectWriting(t, c, username, password, clientID)
}

// connectWriting connects a v5 client over c that reads on one goroutine
// (late, see lateReader) and writes on another, the way client libraries
// do; as they do, it ends the connection when a write fails.
func connectWriting(t *testing.T, c net.Conn, username, password, clientID string) *raw {
	t.Helper()
	r := &raw{t: t, c: lateReader{c}, in: make(chan packets.Packet, 4096)}
	t.Cleanup(func() { c.Close() })
	go r.read()
	r.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Keepalive: 30, Clean: true, ClientIdentifier: clientID,
			UsernameFlag: true, Username: []byte(username), PasswordFlag: true, Password: []byte(password),
		},
	})
	if ack := r.next(packets.Connack); ack.ReasonCode != 0 {
		t.Fatalf("CONNECT refused: %#x", ack.ReasonCode)
	}
	return r
}

// keepWriting writes first, then valid QoS 0 PUBLISHes, as fast as the
// connection takes them, until a write fails; then it closes the
// connection. The channel returned says why it stopped.
func (r *raw) keepWriting(first []byte) <-chan error {
	var batch []byte
	for range 64 {
		batch = append(batch, rawPublish(0, 0, "filler", nil, "0123456789")...)
	}
	stopped := make(chan error, 1)
	go func() {
		defer r.c.Close()
		for _, b := range [][]byte{first, batch} {
			if _, err := r.c.Write(b); err != nil {
				stopped <- err
				return
			}
		}
		for {
			if _, err := r.c.Write(batch); err != nil {
				stopped <- err
				return
			}
		}
	}()
	return stopped
}

// disconnect is the reason code of the DISCONNECT the client read, and
// false if it read none before the connection ended.
func (r *raw) disconnect() (byte, bool) {
	deadline := time.After(10 * time.Second)
	for {
		select {
		case pk, ok := <-r.in:
			if !ok {
				return 0, false
			}
			if pk.FixedHeader.Type == packets.Disconnect {
				return pk.ReasonCode, true
			}
		case <-deadline:
			return 0, false
		}
	}
}

// TestReasonCodeReachesWritingClient: a protocol or quota error found after
// the CONNECT ends the connection with a DISCONNECT whose reason code the
// client reads, although it is still sending when the server decides
// (its reader on another goroutine, behind its writer). Closing a socket
// with unread input answers with a reset, which a client that keeps
// writing meets before its reader reaches the DISCONNECT; the hub closes
// the write side first and reads on for a while (see broker/linger.go).
func TestReasonCodeReachesWritingClient(t *testing.T) {
	var burst []byte // a QoS 2 burst one past Receive Maximum (1024), never released
	for id := range uint16(1025) {
		burst = append(burst, rawPublish(2, id+1, "burst", nil, "x")...)
	}
	for _, tc := range []struct {
		name   string
		quotas map[string]int64
		first  []byte // what the client sends before its stream of valid publishes
		want   byte
	}{
		{name: "topic alias 0", first: rawPublish(0, 0, "t", topicAlias(0), "x"), want: 0x94},
		{name: "topic alias above the maximum", first: rawPublish(0, 0, "t", topicAlias(65), "x"), want: 0x94},
		{name: "QoS 2 past Receive Maximum", first: burst, want: 0x93},
		{name: "packet over max_packet_size", quotas: map[string]int64{"max_packet_size": 1024},
			first: rawPublish(0, 0, "t", nil, strings.Repeat("x", 2000)), want: 0x95},
		{name: "QoS 1 without a packet identifier", first: rawPublish(1, 0, "t", nil, "x"), want: 0x82},
		{name: "publish_rate", quotas: map[string]int64{"publish_rate": 50}, want: 0x96},
		// mochi sends no DISCONNECT for a packet it cannot decode.
		{name: "malformed properties", first: rawPublish(0, 0, "t", []byte{0xFF}, "x"), want: 0x81},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t)
			s.tenant("acme")
			s.liftPublishLimits("acme", tc.quotas)
			c := dialWriting(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
			c.expectDisconnect(tc.first, tc.want)
		})
	}
}

// liftPublishLimits lifts the quotas that would stop a client publishing
// as fast as it can, then sets the ones given.
func (s *stack) liftPublishLimits(tenant string, quotas map[string]int64) {
	s.t.Helper()
	for _, q := range []string{"publish_rate", "tenant_publish_rate", "bandwidth_in", "messages_per_month"} {
		if _, ok := quotas[q]; !ok {
			s.setQuota(tenant, q, 1<<40)
		}
	}
	for q, v := range quotas {
		s.setQuota(tenant, q, v)
	}
}

// expectDisconnect sends first and keeps writing after it, and checks the
// DISCONNECT the client reads.
func (r *raw) expectDisconnect(first []byte, want byte) {
	r.t.Helper()
	stopped := r.keepWriting(first)
	code, ok := r.disconnect()
	r.c.Close()
	err := <-stopped
	switch {
	case !ok:
		r.t.Errorf("no DISCONNECT read, want 0x%02x; the writer stopped with: %v", want, err)
	case code != want:
		r.t.Errorf("DISCONNECT 0x%02x, want 0x%02x", code, want)
	}
}

// TestReasonCodeOverTLSAndWebSocket: the same over TLS and over WebSocket
// on TLS, on one port shared by both as in production. Their write sides
// end in turn (close frame, close_notify, FIN) before the drain.
func TestReasonCodeOverTLSAndWebSocket(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	secret := s.device("acme", "pub")
	files, err := transport.DevCertificates(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := transport.LoadCertificate(files.Cert, files.Key, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mqttLn, webLn := transport.Split(tls.NewListener(s.hub.Gate(ln), transport.ServerConfig(cert)), 5*time.Second)
	go s.hub.Serve(mqttLn)
	web := &http.Server{Handler: transport.WebSocket(s.hub.ServeConn, nil), ReadHeaderTimeout: 5 * time.Second}
	go web.Serve(webLn)
	t.Cleanup(func() { web.Close() })
	roots := x509.NewCertPool()
	roots.AddCert(mustParseCertFile(t, files.CA))
	dial := map[string]func() (net.Conn, error){
		"TLS": func() (net.Conn, error) {
			return tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{transport.ALPN}})
		},
		"WebSocket": func() (net.Conn, error) {
			d := websocket.Dialer{Subprotocols: []string{"mqtt"}, TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}
			ws, _, err := d.Dial("wss://"+ln.Addr().String()+transport.WebSocketPath, nil)
			if err != nil {
				return nil, err
			}
			return transport.NewWebSocketConn(ws), nil
		},
	}
	for _, over := range []string{"TLS", "WebSocket"} {
		for _, tc := range []struct {
			name   string
			quotas map[string]int64
			first  []byte
			want   byte
		}{
			{name: "topic alias 0", first: rawPublish(0, 0, "t", topicAlias(0), "x"), want: 0x94},
			{name: "publish_rate", quotas: map[string]int64{"publish_rate": 50}, want: 0x96},
		} {
			t.Run(over+"/"+tc.name, func(t *testing.T) {
				s.liftPublishLimits("acme", tc.quotas)
				conn, err := dial[over]()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				connectWriting(t, conn, user("acme", "pub"), secret, "pub").expectDisconnect(tc.first, tc.want)
			})
		}
	}
}

// TestReasonCodeReachesPaho: paho.golang publishing QoS 0 without pause
// learns why it was disconnected. paho ends the connection as soon as a
// write fails, whatever its reader has not handled yet.
func TestReasonCodeReachesPaho(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.liftPublishLimits("acme", nil)
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		zero := uint16(0)
		for i := 0; ; i++ {
			p := &paho.Publish{Topic: "filler", Payload: []byte("0123456789")}
			if i == 200 {
				p = &paho.Publish{Topic: "t", Payload: []byte("x"), Properties: &paho.PublishProperties{TopicAlias: &zero}}
			}
			if _, err := pub.Publish(context.Background(), p); err != nil {
				return
			}
		}
	}()
	<-stopped // the connection ended
	select {
	case d := <-pub.discs:
		if d.ReasonCode != 0x94 {
			t.Errorf("DISCONNECT 0x%02x for topic alias 0, want 0x94", d.ReasonCode)
		}
	case <-time.After(2 * time.Second):
		t.Error("the connection ended without the DISCONNECT reaching paho, want 0x94")
	}
}

// TestReasonCodeReachesBusySubscriber: a client with messages queued for
// it (one that reads slower than it is sent to) reads the DISCONNECT too. mochi puts a DISCONNECT written while the
// client's queue is not empty in a buffer behind the queued messages,
// which nothing writes once the client is stopped; the hub sends it as it
// closes the connection.
func TestReasonCodeReachesBusySubscriber(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.liftPublishLimits("acme", map[string]int64{"bandwidth_out": 1 << 40})
	sub, _ := dialRaw(t, s.addr, user("acme", "sub"), s.device("acme", "sub"), "sub")
	sub.subscribe("flow", 0)
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := pub.Publish(context.Background(), &paho.Publish{Topic: "flow", Payload: make([]byte, 100)}); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-stopped }()
	sub.next(packets.Publish) // the flow has reached the subscriber
	// The raw client's buffer of 4096 packets fills, then it reads no
	// further until disconnect does: its queue in the broker fills.
	time.Sleep(200 * time.Millisecond)
	if _, err := sub.c.Write(rawPublish(0, 0, "t", topicAlias(0), "x")); err != nil {
		t.Fatal(err)
	}
	switch code, ok := sub.disconnect(); {
	case !ok:
		t.Error("no DISCONNECT read, want 0x94")
	case code != 0x94:
		t.Errorf("DISCONNECT 0x%02x, want 0x94", code)
	}
}

// TestReasonCodeReachesForwardedClient: a device whose connection another
// node forwards to its tenant's home reads the DISCONNECT the home sends
// while it is still writing: the forwarding node ends its side of the
// device's connection and drains it as the home does, rather than resetting
// it.
func TestReasonCodeReachesForwardedClient(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.liftPublishLimits("acme", nil)
	secret := s.device("acme", "pub")
	a, b := newFleetNode(t, s, "a"), newFleetNode(t, s, "b")
	placer := mustV5(t, a.addr, user("acme", "placer"), s.device("acme", "placer"), "placer")
	defer placer.Disconnect(&paho.Disconnect{})
	_, other := homeOf(t, "acme", a, b)
	before := other.hub.Forwards()
	for range 10 {
		c := dialWriting(t, other.addr, user("acme", "pub"), secret, "pub")
		if n := other.hub.Forwards(); n <= before {
			t.Fatalf("node %s forwards %d connections, want the writing client's beside %d", other.id, n, before)
		}
		c.expectDisconnect(rawPublish(0, 0, "t", topicAlias(0), "x"), 0x94)
	}
}
