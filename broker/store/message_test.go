package store_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/broker/store"
)

// TestMessageEncoding: a message comes back from its encoding as it was,
// AppendBinary appends exactly MarshalBinary's bytes after what the
// buffer holds, and a topic too long for the encoding is refused.
func TestMessageEncoding(t *testing.T) {
	m := store.Message{
		Topic: "sites/a/temp", Payload: []byte(`{"temp":21.5}`), QoS: 1, Retain: true,
		Created: time.Unix(1700000000, 123).UTC(), Properties: []byte{1, 2, 3},
	}
	enc, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var back store.Message
	if err := back.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	if back.Topic != m.Topic || !bytes.Equal(back.Payload, m.Payload) || back.QoS != m.QoS || !back.Retain ||
		!back.Created.Equal(m.Created) || !back.Expires.IsZero() || !bytes.Equal(back.Properties, m.Properties) {
		t.Errorf("decoded %+v, want %+v", back, m)
	}
	prefix := []byte("held")
	got, err := m.AppendBinary(prefix)
	if err != nil || !bytes.Equal(got, append([]byte("held"), enc...)) {
		t.Errorf("AppendBinary after %q: %q (%v), want the prefix and MarshalBinary's %d bytes", "held", got, err, len(enc))
	}
	long := store.Message{Topic: strings.Repeat("t", 0x10000)}
	if _, err := long.AppendBinary(nil); err == nil {
		t.Error("a topic of 65,536 bytes was encoded")
	}
}
