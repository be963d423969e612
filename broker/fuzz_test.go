package broker

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/tenants"
)

// FuzzReadConnect feeds arbitrary bytes to the CONNECT reader. It must never
// panic, never read past its size cap, and whatever it accepts must be a
// CONNECT that mochi's own validation accepts too.
func FuzzReadConnect(f *testing.F) {
	for _, tc := range packets.TPacketData[packets.Connect] {
		f.Add(tc.RawBytes)
	}
	f.Add([]byte{0x10, 0x80, 0x80, 0x80, 0x64})
	f.Add([]byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Add([]byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61})
	const maxSize = 4096
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		raw, pk, err := readConnect(bufio.NewReader(r), maxSize)
		if len(raw) > maxSize+5 {
			t.Fatalf("returned %d bytes, over the cap", len(raw))
		}
		if err != nil {
			return
		}
		if raw[0] != 0x10 || pk.ConnectValidate() != packets.CodeSuccess {
			t.Fatalf("accepted an invalid CONNECT: % x", data)
		}
		// What it accepted, it can replay: the bytes are the packet, or,
		// for a CONNECT with an empty password, the packet encoded again
		// without it (see readConnect), which reads back the same.
		if !bytes.HasPrefix(data, raw) {
			again, pk2, err := readConnect(bufio.NewReader(bytes.NewReader(raw)), maxSize)
			if err != nil || !bytes.Equal(again, raw) || pk2.Connect.PasswordFlag ||
				pk2.Connect.ClientIdentifier != pk.Connect.ClientIdentifier || !bytes.Equal(pk2.Connect.Username, pk.Connect.Username) {
				t.Fatalf("replay bytes are neither the input's prefix nor the same CONNECT without an empty password: % x", raw)
			}
		}
	})
}

// FuzzSplitUsername: whatever it accepts is a valid slug and device name
// joined by the one slash, so it cannot be used to reach another tenant.
func FuzzSplitUsername(f *testing.F) {
	for _, s := range []string{"acme/d1", "acme", "acme/", "/d1", "acme//d1", "acme/d1/x", "ACME/d1", "асme/d1", "acme/d1\x00", "a/b/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, u string) {
		tenant, device, ok := splitUsername(u)
		if !ok {
			return
		}
		if tenant+"/"+device != u || strings.Count(u, "/") != 1 || !tenants.ValidSlug(tenant) || !tenants.ValidDeviceName(device) {
			t.Fatalf("accepted %q as %q/%q", u, tenant, device)
		}
	})
}

// FuzzDeviceConn feeds arbitrary post-CONNECT bytes through the framing
// reader: it must not panic, and must pass through exactly the bytes it got
// for every frame it lets through.
func FuzzDeviceConn(f *testing.F) {
	for _, typ := range []byte{packets.Publish, packets.Subscribe, packets.Unsubscribe, packets.Pingreq} {
		for _, tc := range packets.TPacketData[typ] {
			f.Add(tc.RawBytes, byte(5))
			f.Add(tc.RawBytes, byte(4))
		}
	}
	f.Add([]byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61}, byte(5))
	f.Fuzz(func(t *testing.T, data []byte, version byte) {
		dc := newDeviceConn(nil, bufio.NewReader(bytes.NewReader(data)), nil, identity{version: version}, nil, 0)
		dc.fixedMax = 1 << 16
		var out bytes.Buffer
		buf := make([]byte, 37)
		for {
			n, err := dc.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				break
			}
		}
		if !bytes.HasPrefix(data, out.Bytes()) {
			t.Fatalf("passed through bytes that were not sent")
		}
	})
}
