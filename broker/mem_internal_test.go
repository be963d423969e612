package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func encode(t testing.TB, pk packets.Packet) []byte {
	t.Helper()
	var b bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&b)
	case packets.Publish:
		err = pk.PublishEncode(&b)
	case packets.Pingreq:
		err = pk.PingreqEncode(&b)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestDeviceConnFramesAcrossBuffers: what the client sends right behind its
// CONNECT (read ahead by the ingress) and a stream whose packets straddle
// the read buffers, one of them larger than a buffer, reach mochi's reader
// (16 bytes, as instances set it) whole and in order; and once the stream is
// consumed the connection holds no read buffer.
func TestDeviceConnFramesAcrossBuffers(t *testing.T) {
	server, client := tcpPair(t)
	connect := encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: "c"}})
	var want [][]byte
	var stream []byte
	for i := range 600 {
		size := 1 + i%37
		if i == 300 {
			size = 3 * readBufSize
		}
		pk := encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: fmt.Sprintf("t/%d", i),
			Payload: bytes.Repeat([]byte{byte(i)}, size)})
		want = append(want, pk)
		stream = append(stream, pk...)
	}
	want = append(want, encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}))
	stream = append(stream, want[len(want)-1]...)
	// The CONNECT and the first packets in one write, so that the
	// ingress's reader reads ahead; the rest in uneven pieces.
	first := append(append([]byte{}, connect...), stream[:100]...)
	if _, err := client.Write(first); err != nil {
		t.Fatal(err)
	}
	go func() {
		rest := stream[100:]
		for i := 0; len(rest) > 0; i++ {
			n := min(len(rest), 1+(i*997)%5000)
			if _, err := client.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
			time.Sleep(time.Millisecond)
		}
	}()

	r := newConnectReader(server)
	raw, _, err := readConnect(r, 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	if r.Buffered() == 0 {
		t.Fatal("the CONNECT reader read nothing ahead: the test does not test the hand-over")
	}
	dc := newDeviceConn(server, r, raw, identity{version: 4}, nil, 0)
	br := bufio.NewReaderSize(dc, 16)
	read := func() []byte {
		b0, err := br.ReadByte()
		if err != nil {
			t.Fatalf("read a packet: %v", err)
		}
		length, _, err := packets.DecodeLength(br)
		if err != nil {
			t.Fatalf("read a length: %v", err)
		}
		var fh packets.FixedHeader
		fh.Decode(b0)
		fh.Remaining = length
		var b bytes.Buffer
		fh.Encode(&b)
		body := make([]byte, length)
		if _, err := io.ReadFull(br, body); err != nil {
			t.Fatalf("read a body: %v", err)
		}
		return append(b.Bytes(), body...)
	}
	if got := read(); !bytes.Equal(got, raw) {
		t.Fatalf("got %x, want the CONNECT %x", got, raw)
	}
	for i, w := range want {
		if got := read(); !bytes.Equal(got, w) {
			t.Fatalf("packet %d: got %d bytes %x..., want %d bytes %x...", i, len(got), got[:min(len(got), 8)], len(w), w[:8])
		}
	}
	if dc.in.buf != nil || dc.in.r != dc.in.w {
		t.Errorf("after the stream the connection holds a read buffer (%d of %d bytes unread)", dc.in.w-dc.in.r, dc.in.w)
	}
}

// TestIdleDeviceConnsHoldNoReadBuffer: connections waiting for input hold no
// read buffer: the heap grows by less than half a buffer per connection
// while a thousand of them wait in Read. (A bufio.Reader per connection, as
// before, is 4 KiB each.)
func TestIdleDeviceConnsHoldNoReadBuffer(t *testing.T) {
	const n = 1000
	servers := make([]net.Conn, n)
	for i := range servers {
		servers[i], _ = tcpPair(t)
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	started := make(chan struct{}, n)
	dcs := make([]*deviceConn, n)
	for i, c := range servers {
		// Each has already served a packet: a read buffer was taken and
		// must have gone back.
		_ = c
		dcs[i] = newDeviceConn(c, newConnectReader(c), nil, identity{version: 4}, nil, 0)
		go func(dc *deviceConn) {
			started <- struct{}{}
			dc.Read(make([]byte, 16))
		}(dcs[i])
	}
	for range n {
		<-started
	}
	time.Sleep(200 * time.Millisecond) // every reader waits in the poller
	per := float64(heap()-before) / n
	for _, dc := range dcs {
		dc.Close()
	}
	if per > 2048 {
		t.Errorf("a waiting connection holds %.0f bytes of heap, want under half a read buffer (2 KiB)", per)
	}
}

// TestMochiEventLoopReachable: the tickers of mochi's event loop are where
// sweep.go looks for them. A new mochi keeping them elsewhere fails here,
// and its instances would keep mochi's loop running every second.
func TestMochiEventLoopReachable(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	if _, _, _, err := mochiTickers(srv); err != nil {
		t.Fatal(err)
	}
}

// TestExpiryLoopSleepsAndWakes: the expiry loop of an instance sleeps while
// nothing may expire, wakes a second before a session is due, lets mochi
// expire it, and sleeps again.
func TestExpiryLoopSleepsAndWakes(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler), SysTopicResendInterval: sysInterval})
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	inst := &instance{server: srv, log: slog.New(slog.DiscardHandler)}
	inst.quietLoop()
	if inst.expiry.tickers == nil {
		t.Fatal("mochi's loop was not quietened")
	}
	if n := srv.Topics.Retained.Len(); n != 0 {
		t.Errorf("%d $SYS messages retained, want none", n)
	}
	now := time.Now()
	inst.sweep(now)
	if inst.expiry.awake || inst.expiry.due.Load() != 0 {
		t.Fatalf("an empty instance: awake %v, due %d; want asleep, nothing due", inst.expiry.awake, inst.expiry.due.Load())
	}

	cl := srv.NewClient(nil, listenerID, "away", false)
	cl.Properties.ProtocolVersion = 5
	cl.Properties.Props.SessionExpiryInterval, cl.Properties.Props.SessionExpiryIntervalFlag = 1, true
	cl.Stop(packets.CodeDisconnect)
	srv.Clients.Add(cl)
	(&expiryHook{inst: inst}).OnDisconnect(cl, nil, false)
	due := inst.expiry.due.Load()
	if want := cl.StopTime() + 2; due != want {
		t.Fatalf("due %d, want %d (stopped at %d, expiry 1 s)", due, want, cl.StopTime())
	}
	inst.sweep(time.Unix(due-3, 0))
	if inst.expiry.awake {
		t.Fatal("woke two seconds before the session was due")
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		inst.sweep(time.Now())
		if _, ok := srv.Clients.Get("away"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the session did not expire")
		}
	}
	if !inst.expiry.awake {
		t.Fatal("the session expired while the loop slept")
	}
	inst.sweep(time.Now().Add(awakeFor))
	if inst.expiry.awake || inst.expiry.due.Load() != 0 {
		t.Errorf("after the expiry: awake %v, due %d; want asleep, nothing due", inst.expiry.awake, inst.expiry.due.Load())
	}
}
