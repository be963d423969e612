package transport

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Forwarded is what a data-plane node that received a device connection
// tells the tenant's home node it hands the connection to: who the device
// is at the network's edge, as the home would have seen it had the device
// connected there. The home authenticates the device itself, so a client
// certificate crosses the hop; the header is signed with the key the nodes
// share, since whoever could forge it could claim any certificate.
type Forwarded struct {
	Origin     string   // the id of the node that forwards
	Remote     net.Addr // the device's address
	TLS        bool     // the device connected over TLS
	ServerName string   // the name it asked for in TLS (SNI)
	// PeerCertificates is the chain it presented in TLS, leaf first,
	// unverified (the home verifies it against the tenant's authorities).
	PeerCertificates []*x509.Certificate
}

// ErrForwardHeader is the error of a forwarded connection whose header is
// missing, malformed, stale or not signed with the nodes' key.
var ErrForwardHeader = errors.New("forwarded connection: header missing, malformed, stale or wrongly signed")

// The header is a PROXY protocol v2 header (so that network tools can read
// it) whose last TLV signs everything before it. The other TLVs are from
// the range PROXY v2 leaves to applications, besides the standard
// AUTHORITY for the server name.
const (
	tlvAuthority = 0x02
	tlvOrigin    = 0xE0
	tlvTLS       = 0xE1 // one byte (1: TLS) then each certificate as a 3-byte length and DER
	tlvTime      = 0xE2 // Unix milliseconds when the header was written
	tlvMAC       = 0xEF // HMAC-SHA256 of the header before this TLV
	macTLVLen    = 3 + sha256.Size
)

// forwardMaxAge bounds how old a header may be, and how far the nodes'
// clocks may disagree.
const forwardMaxAge = 2 * time.Minute

// WriteForwardHeader writes f's header, signed with key, to w.
func WriteForwardHeader(w io.Writer, f Forwarded, key []byte, now time.Time) error {
	var addrs []byte
	fam := byte(0x00) // UNSPEC
	if tcp, ok := f.Remote.(*net.TCPAddr); ok {
		port := binary.BigEndian.AppendUint16(nil, uint16(tcp.Port))
		if ip4 := tcp.IP.To4(); ip4 != nil {
			fam = 0x11
			addrs = append(append(append(append(addrs, ip4...), 0, 0, 0, 0), port...), 0, 0)
		} else if ip16 := tcp.IP.To16(); ip16 != nil {
			fam = 0x21
			addrs = append(append(append(append(addrs, ip16...), make([]byte, 16)...), port...), 0, 0)
		}
	}
	var tlvs []byte
	var err error
	tlv := func(typ byte, v []byte) {
		if len(v) > 0xFFFF {
			err = fmt.Errorf("forward header: TLV %#x of %d bytes", typ, len(v))
			return
		}
		tlvs = append(binary.BigEndian.AppendUint16(append(tlvs, typ), uint16(len(v))), v...)
	}
	if f.ServerName != "" {
		tlv(tlvAuthority, []byte(f.ServerName))
	}
	tlv(tlvOrigin, []byte(f.Origin))
	if f.TLS {
		v := []byte{1}
		for _, c := range f.PeerCertificates {
			n := len(c.Raw)
			v = append(append(v, byte(n>>16), byte(n>>8), byte(n)), c.Raw...)
		}
		tlv(tlvTLS, v)
	}
	tlv(tlvTime, binary.BigEndian.AppendUint64(nil, uint64(now.UnixMilli())))
	if err != nil {
		return err
	}
	n := len(addrs) + len(tlvs) + macTLVLen
	if n > 0xFFFF {
		return fmt.Errorf("forward header: %d bytes, more than a PROXY header holds", n)
	}
	h := append(append([]byte{}, proxyV2Sig...), 0x21, fam)
	h = binary.BigEndian.AppendUint16(h, uint16(n))
	h = append(append(h, addrs...), tlvs...)
	mac := hmac.New(sha256.New, key)
	mac.Write(h)
	h = append(binary.BigEndian.AppendUint16(append(h, tlvMAC), sha256.Size), mac.Sum(nil)...)
	_, err = w.Write(h)
	return err
}

// readForwardHeader reads and checks a forwarded connection's header.
func readForwardHeader(r *bufio.Reader, key []byte, now time.Time) (Forwarded, error) {
	var f Forwarded
	var h [16]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return f, fmt.Errorf("%w: %v", ErrForwardHeader, err)
	}
	if !bytes.Equal(h[:12], proxyV2Sig) || h[12] != 0x21 {
		return f, ErrForwardHeader
	}
	n := int(binary.BigEndian.Uint16(h[14:]))
	if n < macTLVLen {
		return f, ErrForwardHeader
	}
	body, err := readAnnounced(r, n)
	if err != nil {
		return f, fmt.Errorf("%w: %v", ErrForwardHeader, err)
	}
	signed, sig := body[:n-macTLVLen], body[n-macTLVLen:]
	if sig[0] != tlvMAC || binary.BigEndian.Uint16(sig[1:]) != sha256.Size {
		return f, ErrForwardHeader
	}
	mac := hmac.New(sha256.New, key)
	mac.Write(h[:])
	mac.Write(signed)
	if !hmac.Equal(mac.Sum(nil), sig[3:]) {
		return f, fmt.Errorf("%w: wrong signature", ErrForwardHeader)
	}
	switch h[13] {
	case 0x11:
		if len(signed) < 12 {
			return f, ErrForwardHeader
		}
		f.Remote = &net.TCPAddr{IP: net.IP(bytes.Clone(signed[0:4])), Port: int(binary.BigEndian.Uint16(signed[8:]))}
		signed = signed[12:]
	case 0x21:
		if len(signed) < 36 {
			return f, ErrForwardHeader
		}
		f.Remote = &net.TCPAddr{IP: net.IP(bytes.Clone(signed[0:16])), Port: int(binary.BigEndian.Uint16(signed[32:]))}
		signed = signed[36:]
	case 0x00:
	default:
		return f, ErrForwardHeader
	}
	var stamped bool
	for len(signed) > 0 {
		if len(signed) < 3 {
			return f, ErrForwardHeader
		}
		typ, l := signed[0], int(binary.BigEndian.Uint16(signed[1:]))
		if len(signed) < 3+l {
			return f, ErrForwardHeader
		}
		v := signed[3 : 3+l]
		signed = signed[3+l:]
		switch typ {
		case tlvAuthority:
			f.ServerName = string(v)
		case tlvOrigin:
			f.Origin = string(v)
		case tlvTLS:
			if len(v) < 1 {
				return f, ErrForwardHeader
			}
			f.TLS, v = v[0] == 1, v[1:]
			for len(v) > 0 {
				if len(v) < 3 {
					return f, ErrForwardHeader
				}
				cl := int(v[0])<<16 | int(v[1])<<8 | int(v[2])
				if len(v) < 3+cl {
					return f, ErrForwardHeader
				}
				c, err := x509.ParseCertificate(v[3 : 3+cl])
				if err != nil {
					return f, fmt.Errorf("%w: %v", ErrForwardHeader, err)
				}
				f.PeerCertificates = append(f.PeerCertificates, c)
				v = v[3+cl:]
			}
		case tlvTime:
			if len(v) != 8 {
				return f, ErrForwardHeader
			}
			at := time.UnixMilli(int64(binary.BigEndian.Uint64(v)))
			if d := now.Sub(at); d > forwardMaxAge || d < -forwardMaxAge {
				return f, fmt.Errorf("%w: written %s ago", ErrForwardHeader, d.Round(time.Second))
			}
			stamped = true
		}
	}
	if !stamped || f.Origin == "" {
		return f, ErrForwardHeader
	}
	return f, nil
}

// readAnnounced reads the n bytes a header announced into a buffer that
// grows as they arrive (to about twice what was received at most), not
// one of n allocated ahead of them: before its signature is checked the
// header is a stranger's, and a connection announcing 64 KiB and sending
// nothing more holds what it sent until its deadline, not 64 KiB.
func readAnnounced(r io.Reader, n int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(n)))
	if err == nil && len(b) < n {
		err = io.ErrUnexpectedEOF
	}
	return b, err
}

// ForwardListener accepts the device connections other data-plane nodes
// forward: each starts with a header signed with key, read on the
// connection's first Read or RemoteAddr within timeout. The connection
// then reports the device's address, TLS state (server name and client
// certificates) and the forwarding node (ForwardOrigin); one whose header
// does not verify fails its first Read.
func ForwardListener(ln net.Listener, key []byte, timeout time.Duration) net.Listener {
	return &proxyListener{Listener: ln, timeout: timeout, key: key}
}

// Forwarding reports whether c (or a connection it wraps) came through a
// ForwardListener: from another node of the fleet, whose header names the
// device. It reads nothing.
func Forwarding(c net.Conn) bool {
	for c != nil {
		if p, ok := c.(*proxyConn); ok {
			return p.key != nil
		}
		c = Unwrap(c)
	}
	return false
}

// ForwardOrigin is the id of the node that forwarded a connection; "" for
// a connection that came straight from its device.
func ForwardOrigin(c net.Conn) string {
	if p, ok := c.(*proxyConn); ok && p.key != nil {
		p.header()
		return p.fwd.Origin
	}
	return ""
}

// forwardedState is the TLS state a forwarded connection's device had at
// the forwarding node, as far as admission needs it; nil without TLS.
func (c *proxyConn) forwardedState() *tls.ConnectionState {
	c.header()
	if !c.fwd.TLS {
		return nil
	}
	return &tls.ConnectionState{ServerName: c.fwd.ServerName, PeerCertificates: c.fwd.PeerCertificates}
}

// DescribeForward says how a device connection appears to the node it is
// forwarded to.
func DescribeForward(c net.Conn, origin string) Forwarded {
	f := Forwarded{Origin: origin, Remote: c.RemoteAddr()}
	if st := TLSState(c); st != nil {
		f.TLS, f.ServerName, f.PeerCertificates = true, st.ServerName, st.PeerCertificates
	}
	return f
}
