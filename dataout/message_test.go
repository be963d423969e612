package dataout_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/roosthub/roost/dataout"
)

// marshalled is a message as encoding/json wrote it before the bodies
// were written field by field: the reference Body and KafkaRecord keep.
type marshalled struct {
	ID              string          `json:"id,omitempty"`
	Topic           string          `json:"topic"`
	Payload         json.RawMessage `json:"payload"`
	PayloadEncoding string          `json:"payload_encoding"`
	QoS             byte            `json:"qos"`
	Retain          bool            `json:"retain"`
	Device          string          `json:"device"`
	ClientID        string          `json:"client_id"`
	Time            time.Time       `json:"time"`
}

func reference(m dataout.Message) marshalled {
	w := marshalled{ID: m.ID, Topic: m.Topic, QoS: m.QoS, Retain: m.Retain, Device: m.Device, ClientID: m.ClientID, Time: m.Time.UTC()}
	if dataout.IsJSON(m.Payload) {
		w.Payload, w.PayloadEncoding = json.RawMessage(m.Payload), "json"
	} else {
		w.Payload, _ = json.Marshal(base64.StdEncoding.EncodeToString(m.Payload))
		w.PayloadEncoding = "base64"
	}
	return w
}

// sameAsMarshal fails t unless Body and KafkaRecord of b are, once the
// embedded payloads' whitespace is taken out and their <, >, &, U+2028
// and U+2029 escaped, the bytes encoding/json
// makes of the same fields.
func sameAsMarshal(t *testing.T, b dataout.Batch) {
	t.Helper()
	ms := make([]marshalled, len(b.Messages))
	for i, m := range b.Messages {
		ms[i] = reference(m)
	}
	want, err := json.Marshal(struct {
		Tenant      string       `json:"tenant"`
		Destination string       `json:"destination"`
		Messages    []marshalled `json:"messages"`
	}{b.Tenant, b.Destination, ms})
	if err != nil {
		t.Fatal(err)
	}
	compact := func(b []byte) []byte {
		var out, escaped bytes.Buffer
		if err := json.Compact(&out, b); err != nil {
			t.Fatalf("not JSON: %v\n%q", err, b)
		}
		json.HTMLEscape(&escaped, out.Bytes())
		return escaped.Bytes()
	}
	if got := compact(dataout.Body(b)); !bytes.Equal(got, want) {
		t.Errorf("body\n got %s\nwant %s", got, want)
	}
	for i, m := range b.Messages {
		want, err := json.Marshal(struct {
			Tenant      string `json:"tenant"`
			Destination string `json:"destination"`
			marshalled
		}{b.Tenant, b.Destination, ms[i]})
		if err != nil {
			t.Fatal(err)
		}
		if got := compact(dataout.KafkaRecord(b, m)); !bytes.Equal(got, want) {
			t.Errorf("record\n got %s\nwant %s", got, want)
		}
	}
}

// TestBodyAsMarshal: the webhook body and the Kafka record, written
// field by field, are what encoding/json wrote: escapes, invalid UTF-8,
// payloads of each encoding, times in any zone.
func TestBodyAsMarshal(t *testing.T) {
	at := time.Date(2026, 12, 6, 7, 30, 0, 123456789, time.FixedZone("x", 3600))
	sameAsMarshal(t, dataout.Batch{Tenant: "acme", Destination: "dst_1", Messages: []dataout.Message{
		{ID: "m1", Topic: "lab/1/temp", Payload: []byte(`{ "temp" : 21.5 }`), QoS: 1, Device: "d1", ClientID: "c1", Time: at},
		{Topic: "a\"b\\c\n\t\r\b\f\x00\x1f<>&\u2028\u2029é😀", Payload: []byte("hello \xff"), QoS: 2, Retain: true,
			Device: "d\xff\xfe", ClientID: "\xe2\x80", Time: at.Add(time.Second)},
		{ID: "m3", Topic: "t", Payload: nil, Time: time.Unix(0, 0)},
		{Topic: "n", Payload: []byte(" 42\n"), Time: at},
		{Topic: "s", Payload: []byte(`"text with <html> & \u2028"`), Time: at},
	}})
	sameAsMarshal(t, dataout.Batch{})
}

// FuzzBody: for any message, the body and the record are valid UTF-8
// JSON and what encoding/json wrote.
func FuzzBody(f *testing.F) {
	f.Add("lab/1/temp", []byte(`{"temp": 21.5}`), "d1", "c1", "m1", byte(1), true, int64(1765000000123456789))
	f.Add("a\"<\xff", []byte("\x00\x01"), "\u2028", "", "", byte(0), false, int64(0))
	f.Fuzz(func(t *testing.T, topic string, payload []byte, device, clientID, id string, qos byte, retain bool, nanos int64) {
		m := dataout.Message{ID: id, Topic: topic, Payload: payload, QoS: qos, Retain: retain, Device: device, ClientID: clientID, Time: time.Unix(0, nanos)}
		sameAsMarshal(t, dataout.Batch{Tenant: device, Destination: clientID, Messages: []dataout.Message{m, m}})
	})
}

// BenchmarkBody: a webhook body of 100 messages with a small JSON
// payload, written field by field (as sent) and by encoding/json (as it
// was), side by side.
func BenchmarkBody(b *testing.B) {
	batch := dataout.Batch{Tenant: "acme", Destination: "dst_1"}
	for i := range 100 {
		batch.Messages = append(batch.Messages, dataout.Message{ID: "01JEXAMPLE" + string(rune('a'+i%26)), Topic: "p2p/42/temp",
			Payload: []byte(`{"temp":21.5,"humidity":40,"seq":12345}`), QoS: 1, Device: "d42", ClientID: "d42-client", Time: time.Now()})
	}
	b.Run("fields", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			dataout.Body(batch)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ms := make([]marshalled, len(batch.Messages))
			for i, m := range batch.Messages {
				ms[i] = reference(m)
			}
			json.Marshal(struct {
				Tenant      string       `json:"tenant"`
				Destination string       `json:"destination"`
				Messages    []marshalled `json:"messages"`
			}{batch.Tenant, batch.Destination, ms})
		}
	})
}
