package dataout

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
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

// IsJSON reports whether a payload is sent (and seen by conditions) as
// JSON: any valid JSON text in UTF-8, a bare number such as 21.5
// included. (encoding/json's syntax check lets other bytes inside
// strings through; embedded, they would make the body invalid.)
func IsJSON(p []byte) bool { return len(p) > 0 && utf8.Valid(p) && json.Valid(p) }

// A message in a webhook body or a Kafka record is a JSON object with
// the fields id (when it has one), topic, payload, payload_encoding, qos,
// retain, device, client_id and time. A payload that is JSON is embedded
// as it came ("payload_encoding": "json"), so a receiver reads
// payload.temp without decoding twice; any other payload is base64
// ("payload_encoding": "base64"), so no byte is lost.
//
// The bodies are written field by field rather than by encoding/json's
// reflection, which also scanned every JSON payload twice more (to
// validate and compact a RawMessage) after IsJSON had: the body is on
// the path of every message a rule sends. The output is what json.Marshal
// made of the same fields, but for a JSON payload's insignificant
// whitespace and its <, >, &, U+2028 and U+2029, which are kept as they
// came (TestBodyAsMarshal, FuzzBody).

// appendFields appends m's fields, without the braces, to dst.
func appendFields(dst []byte, m Message) []byte {
	if m.ID != "" {
		dst = append(dst, `"id":`...)
		dst = appendString(dst, m.ID)
		dst = append(dst, ',')
	}
	dst = append(dst, `"topic":`...)
	dst = appendString(dst, m.Topic)
	dst = append(dst, `,"payload":`...)
	if IsJSON(m.Payload) {
		dst = append(dst, m.Payload...)
		dst = append(dst, `,"payload_encoding":"json"`...)
	} else {
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, m.Payload)
		dst = append(dst, `","payload_encoding":"base64"`...)
	}
	dst = append(dst, `,"qos":`...)
	dst = strconv.AppendUint(dst, uint64(m.QoS), 10)
	dst = append(dst, `,"retain":`...)
	dst = strconv.AppendBool(dst, m.Retain)
	dst = append(dst, `,"device":`...)
	dst = appendString(dst, m.Device)
	dst = append(dst, `,"client_id":`...)
	dst = appendString(dst, m.ClientID)
	dst = append(dst, `,"time":"`...)
	dst = m.Time.UTC().AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

// Body is the JSON body of the webhook request carrying b.
func Body(b Batch) []byte {
	size := 64 + len(b.Tenant) + len(b.Destination)
	for _, m := range b.Messages {
		size += 160 + len(m.ID) + len(m.Topic) + len(m.Payload)*4/3 + len(m.Device) + len(m.ClientID)
	}
	out := make([]byte, 0, size)
	out = append(out, `{"tenant":`...)
	out = appendString(out, b.Tenant)
	out = append(out, `,"destination":`...)
	out = appendString(out, b.Destination)
	out = append(out, `,"messages":[`...)
	for i, m := range b.Messages {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, '{')
		out = appendFields(out, m)
		out = append(out, '}')
	}
	return append(out, "]}"...)
}

// appendString appends s to dst as a JSON string, escaped as
// encoding/json escapes it: the quote, the backslash and control
// characters; <, > and & (so a body is safe inside HTML); U+2028 and
// U+2029; and each byte of invalid UTF-8 as U+FFFD.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
