package dataout

import (
	"encoding/base64"
	"encoding/json"
	"time"
	"unicode/utf8"
)

// Message is one MQTT message as a destination receives it.
type Message struct {
	// ID names the message for the receiver's deduplication: delivery is
	// at least once.
	ID       string
	Topic    string
	Payload  []byte
	QoS      byte
	Retain   bool
	Device   string
	ClientID string
	Time     time.Time
}

// Batch is what one webhook request carries: messages of one tenant for
// one destination.
type Batch struct {
	Tenant      string
	Destination string
	Messages    []Message
}

// wireMessage is a message in a webhook body. A payload that is JSON is
// embedded as JSON ("payload_encoding": "json"), so a receiver reads
// payload.temp without decoding twice; any other payload is base64
// ("payload_encoding": "base64"), so no byte is lost.
type wireMessage struct {
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

type wireBatch struct {
	Tenant      string        `json:"tenant"`
	Destination string        `json:"destination"`
	Messages    []wireMessage `json:"messages"`
}

// IsJSON reports whether a payload is sent (and seen by conditions) as
// JSON: any valid JSON text in UTF-8, a bare number such as 21.5
// included. (encoding/json's syntax check lets other bytes inside
// strings through; embedded, they would make the body invalid.)
func IsJSON(p []byte) bool { return len(p) > 0 && utf8.Valid(p) && json.Valid(p) }

// wire is a message as a webhook body or a Kafka record carries it.
func wire(m Message) wireMessage {
	wm := wireMessage{ID: m.ID, Topic: m.Topic, QoS: m.QoS, Retain: m.Retain, Device: m.Device, ClientID: m.ClientID, Time: m.Time.UTC()}
	if IsJSON(m.Payload) {
		wm.Payload, wm.PayloadEncoding = json.RawMessage(m.Payload), "json"
	} else {
		s, _ := json.Marshal(base64.StdEncoding.EncodeToString(m.Payload))
		wm.Payload, wm.PayloadEncoding = s, "base64"
	}
	return wm
}

// Body is the JSON body of the webhook request carrying b.
func Body(b Batch) []byte {
	w := wireBatch{Tenant: b.Tenant, Destination: b.Destination, Messages: make([]wireMessage, len(b.Messages))}
	for i, m := range b.Messages {
		w.Messages[i] = wire(m)
	}
	out, err := json.Marshal(w)
	if err != nil {
		panic(err) // every payload embedded is valid JSON
	}
	return out
}
