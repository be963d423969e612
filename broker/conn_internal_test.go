package broker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestConnackFirst: connackFirst puts the CONNACK before what was written
// ahead of it, leaves bytes that hold no whole CONNACK waiting, and hands
// back the very bytes it was given when the CONNACK is first already.
func TestConnackFirst(t *testing.T) {
	connack := []byte{packets.Connack << 4, 2, 0, 0}
	publish := []byte{packets.Publish << 4, 3, 0, 1, 't'}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	for _, tc := range []struct {
		name   string
		in     []byte
		want   []byte
		wantOK bool
	}{
		{"connack alone", connack, connack, true},
		{"connack then publish", cat(connack, publish), cat(connack, publish), true},
		{"publish then connack", cat(publish, connack), cat(connack, publish), true},
		{"publish, connack, publish", cat(publish, connack, publish), cat(connack, publish, publish), true},
		{"publish alone", publish, publish, false},
		{"connack cut short", connack[:3], connack[:3], false},
		{"publish then connack cut short", cat(publish, connack[:3]), cat(publish, connack[:3]), false},
		{"nothing", nil, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := bytes.Clone(tc.in)
			got, ok := connackFirst(in)
			if !bytes.Equal(got, tc.want) || ok != tc.wantOK {
				t.Fatalf("got %x, %v; want %x, %v", got, ok, tc.want, tc.wantOK)
			}
			if ok && in[0]>>4 == packets.Connack && &got[0] != &in[0] {
				t.Errorf("a CONNACK first already was copied")
			}
		})
	}
}

// TestWithoutMarkers: a write leaves out the markers of packets not to be
// written (see unwrite), wherever they are among whole packets, and
// nothing else: not the same bytes inside a packet, nor bytes that do not
// frame as packets.
func TestWithoutMarkers(t *testing.T) {
	mark := marker[:]
	publish := []byte{packets.Publish << 4, 5, 0, 1, 't', 0xc0, 0x00} // a payload that reads like a marker
	puback := []byte{packets.Puback << 4, 2, 0, 1}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	for _, tc := range []struct {
		name    string
		in      []byte
		want    []byte
		markers int64
	}{
		{"marker alone", mark, nil, 1},
		{"markers alone", cat(mark, mark), nil, 2},
		{"marker first", cat(mark, publish), publish, 1},
		{"marker last", cat(publish, mark), publish, 1},
		{"markers between", cat(publish, mark, puback, mark, publish), cat(publish, puback, publish), 2},
		{"no marker", cat(publish, puback), cat(publish, puback), 0},
		{"cut short after a marker", cat(mark, publish[:3]), publish[:3], 1},
		{"cut short", cat(publish[:1]), publish[:1], 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &deviceConn{}
			c.unwritten.Store(10)
			got := c.withoutMarkers(bytes.Clone(tc.in))
			if !bytes.Equal(got, tc.want) {
				t.Errorf("got %x, want %x", got, tc.want)
			}
			if left := c.unwritten.Load(); 10-left != tc.markers {
				t.Errorf("markers counted out: %d, want %d", 10-left, tc.markers)
			}
		})
	}
}

// TestDeviceConnWritesConnackFirst: what mochi writes before the CONNACK
// is held and reaches the client after it; a CONNACK written first goes
// out at once, and what follows it is not held.
func TestDeviceConnWritesConnackFirst(t *testing.T) {
	connack := []byte{packets.Connack << 4, 2, 0, 0}
	publish := []byte{packets.Publish << 4, 3, 0, 1, 't'}
	for _, tc := range []struct {
		name   string
		writes [][]byte
		want   []byte
	}{
		{"connack, then publish", [][]byte{connack, publish}, append(bytes.Clone(connack), publish...)},
		{"publish, then connack", [][]byte{publish, connack}, append(bytes.Clone(connack), publish...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server, client := tcpPair(t)
			dc := newDeviceConn(server, nil, nil, identity{version: 4}, nil, 0)
			for _, w := range tc.writes {
				if n, err := dc.Write(bytes.Clone(w)); n != len(w) || err != nil {
					t.Fatalf("write %x: got %d, %v; want %d, nil", w, n, err, len(w))
				}
			}
			got := make([]byte, len(tc.want))
			if _, err := io.ReadFull(client, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("the client read %x, want %x", got, tc.want)
			}
			if dc.held != nil {
				t.Errorf("%d bytes still held after the CONNACK", len(dc.held))
			}
		})
	}
}

// TestCodeOfMatchesErrorsAs: codeOf answers as errors.As does.
func TestCodeOfMatchesErrorsAs(t *testing.T) {
	for _, err := range []error{
		nil,
		packets.CodeDisconnect,
		packets.ErrMalformedPacket,
		fmt.Errorf("read: %w", packets.ErrProtocolViolation),
		errors.Join(io.EOF, packets.ErrPacketTooLarge),
		io.EOF,
		flushError{packets.ErrMalformedPacket}, // does not unwrap
	} {
		var want packets.Code
		wantOK := errors.As(err, &want)
		if got, ok := codeOf(err); got != want || ok != wantOK {
			t.Errorf("codeOf(%v) = %v, %v; want %v, %v", err, got, ok, want, wantOK)
		}
	}
	var disconnect error = packets.CodeDisconnect // boxed once, as mochi hands it over
	if n := testing.AllocsPerRun(100, func() { codeOf(disconnect) }); n != 0 {
		t.Errorf("codeOf a packets.Code allocates %v times, want 0", n)
	}
}
