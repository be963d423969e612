package broker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/tenants"
)

// Errors reading the first packet. None of them gets a CONNACK: the peer has
// not shown it speaks MQTT.
var (
	errNotConnect     = errors.New("first packet is not CONNECT")
	errConnectTooBig  = errors.New("CONNECT larger than the ingress accepts")
	errMalformedFrame = errors.New("malformed packet length")
)

// connectChunk is the most readConnect allocates for a CONNECT's body
// ahead of the bytes that fill it.
const connectChunk = 16 << 10

// readConnect reads the first packet from r, which must be a CONNECT of at
// most maxSize bytes. The length is compared with maxSize before anything is
// allocated for the body, so a header announcing 200 MB costs nothing. Nor
// is the length it announces allocated at once: the body is read into a
// buffer that grows as it arrives (connectChunk at first, then doubling),
// so that a connection announcing the largest CONNECT and sending nothing
// more holds 16 KiB, not maxSize, before anyone knows whose device it is.
// It returns the packet's raw bytes (to replay to the broker) and the
// decoded packet. A CONNECT that is framed well but does not decode returns
// the packet with its protocol version and a packets.Code error, so the
// caller can answer with a CONNACK.
func readConnect(r *bufio.Reader, maxSize int) ([]byte, packets.Packet, error) {
	var pk packets.Packet
	b0, err := r.ReadByte()
	if err != nil {
		return nil, pk, err
	}
	if b0 != packets.Connect<<4 {
		return nil, pk, errNotConnect
	}
	var hdr [5]byte
	n, length, err := readLength(r, b0, &hdr)
	if err != nil {
		return nil, pk, err
	}
	if length > maxSize {
		return nil, pk, errConnectTooBig
	}
	raw, err := readBody(r, hdr[:n], length)
	if err != nil {
		return nil, pk, err
	}
	pk.FixedHeader = packets.FixedHeader{Type: packets.Connect, Remaining: length}
	if err := decodeConnect(&pk, raw[n:]); err != nil {
		return raw, pk, err
	}
	// MQTT allows a password of 0 bytes (3.1.1 §3.1.3.5, 5 §3.1.3.6), and
	// a device proving itself with a certificate may send one; mochi calls
	// it a protocol violation. It is validated, and replayed to mochi,
	// without the flag: the broker has no use for a password the ingress
	// already checked.
	emptyPassword := pk.Connect.PasswordFlag && len(pk.Connect.Password) == 0
	pk.Connect.PasswordFlag = pk.Connect.PasswordFlag && !emptyPassword
	if code := pk.ConnectValidate(); code != packets.CodeSuccess {
		return raw, pk, code
	}
	if emptyPassword {
		var b bytes.Buffer
		if err := pk.ConnectEncode(&b); err != nil {
			return raw, pk, packets.ErrMalformedPassword
		}
		raw = b.Bytes()
	}
	return raw, pk, nil
}

// readBody reads a packet's body of length bytes from r, and returns it
// after hdr, its fixed header. The buffer is allocated as the body
// arrives: connectChunk (or the whole body, if smaller) to start with,
// then twice what it holds each time it is full, never past the body; it
// is at most about twice what was received, and the body is copied
// O(log length) times.
func readBody(r *bufio.Reader, hdr []byte, length int) ([]byte, error) {
	size := len(hdr) + length
	raw := make([]byte, len(hdr), min(size, len(hdr)+connectChunk))
	copy(raw, hdr)
	for len(raw) < size {
		if len(raw) == cap(raw) {
			raw = slices.Grow(raw, min(size, 2*len(raw))-len(raw))
		}
		end := min(cap(raw), size)
		got, err := io.ReadFull(r, raw[len(raw):end])
		raw = raw[:len(raw)+got]
		if err != nil {
			return nil, err
		}
	}
	return raw, nil
}

// readLength reads a fixed header's remaining length (a variable byte
// integer of at most four bytes) after its first byte b0, into hdr with
// b0, and returns the header's size with the length. hdr is the caller's,
// so that reading a CONNECT allocates nothing but its bytes.
func readLength(r *bufio.Reader, b0 byte, hdr *[5]byte) (n, length int, err error) {
	hdr[0] = b0
	mult := 1
	for n = 1; ; n++ {
		if n == len(hdr) {
			return 0, 0, errMalformedFrame
		}
		b, err := r.ReadByte()
		if err != nil {
			return 0, 0, err
		}
		hdr[n] = b
		length += int(b&0x7f) * mult
		if b&0x80 == 0 {
			return n + 1, length, nil
		}
		mult *= 128
	}
}

// decodeConnect decodes a CONNECT body with mochi's decoder, turning a panic
// on hostile input into a malformed-packet error.
func decodeConnect(pk *packets.Packet, body []byte) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = packets.ErrMalformedPacket
		}
	}()
	if err := pk.ConnectDecode(body); err != nil {
		var code packets.Code
		if errors.As(err, &code) {
			return code
		}
		return packets.ErrMalformedPacket
	}
	return nil
}

// splitUsername parses "<tenant>/<device>". It accepts exactly one slash,
// a valid tenant slug and a valid device name: nothing else can name a
// device, so anything else is refused like a wrong password.
func splitUsername(u string) (tenant, device string, ok bool) {
	tenant, device, ok = strings.Cut(u, "/")
	if !ok || !tenants.ValidSlug(tenant) || !tenants.ValidDeviceName(device) {
		return "", "", false
	}
	return tenant, device, true
}

// refusal is a CONNACK refusal: its MQTT 5 reason code and its 3.1.1 return
// code (0 means a 3.1.1 client is just disconnected: 3.1.1 has no code for
// it).
type refusal struct {
	v5, v3 byte
	reason string
}

func (r refusal) Error() string { return r.reason }

// The refusals the ingress gives. Unknown tenant, unknown device, wrong
// secret and disabled device all get badCredentials, so that nothing can be
// learnt about which tenants and devices exist.
var (
	badCredentials    = refusal{0x86, 0x04, "bad username or password"}
	tenantSuspended   = refusal{0x8A, 0x05, "tenant suspended"}
	clientIDRefused   = refusal{0x85, 0x02, "client identifier not valid"}
	willNotAllowed    = refusal{0x87, 0x05, "will topic not allowed"}
	authThrottled     = refusal{0x9F, 0x03, "too many failed attempts"}
	packetTooLarge    = refusal{0x95, 0x00, "packet too large"}
	serverBusy        = refusal{0x89, 0x03, "server busy"}
	serverUnavailable = refusal{0x88, 0x03, "server unavailable"}
)

// refusalFor maps a CONNECT that failed mochi's decoding or validation to
// a refusal. It matches mochi's codes whole: they share their bytes (every
// protocol violation is 0x82), so matching the byte alone would give a
// missing username the code of an unsupported protocol version.
func refusalFor(code packets.Code) refusal {
	switch code {
	case packets.ErrProtocolViolationProtocolName, packets.ErrProtocolViolationProtocolVersion, packets.ErrUnsupportedProtocolVersion:
		return refusal{0x84, 0x01, code.Reason}
	case packets.ErrClientIdentifierNotValid, packets.ErrClientIdentifierTooLong:
		return refusal{0x85, 0x02, code.Reason}
	case packets.ErrProtocolViolationFlagNoUsername, packets.ErrMalformedUsername, packets.ErrMalformedPassword:
		// A username or password announced by its flag but missing or cut
		// short: MQTT 5 calls that a malformed packet; 3.1.1 has a code
		// for it, "bad user name or password: the data in the user name
		// or password is malformed".
		return refusal{packets.ErrMalformedPacket.Code, 0x04, code.Reason}
	}
	return refusal{code.Code, 0x00, code.Reason}
}

// writeConnack sends a refusing CONNACK in the client's protocol version.
// A 3.1.1 refusal without a code sends nothing.
func writeConnack(w net.Conn, version byte, r refusal) error {
	if version == 5 {
		_, err := w.Write([]byte{packets.Connack << 4, 3, 0, r.v5, 0})
		return err
	}
	if r.v3 == 0 {
		return nil
	}
	_, err := w.Write([]byte{packets.Connack << 4, 2, 0, r.v3})
	return err
}

// String is for logs.
func (r refusal) String() string { return fmt.Sprintf("%s (0x%02x)", r.reason, r.v5) }

// clientEnded reports whether a client ended its connection with a
// DISCONNECT: mochi stops it with the normal reason, or, for an MQTT 5
// DISCONNECT asking for the Will, with 0x04.
func clientEnded(cl *mqtt.Client) bool {
	cause := cl.StopCause()
	return cause == packets.CodeDisconnect || cause == packets.CodeDisconnectWillMessage
}
