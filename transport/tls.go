// Package transport is how devices reach the data plane besides plain TCP:
// TLS with certificates reloaded from disk, WebSocket (and WebSocket over
// TLS), one TLS port shared by MQTT and WebSocket, and a development
// certificate authority for laptops.
package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// ALPN is the protocol name MQTT clients offer in TLS (as AWS IoT and
// EMQX accept it); a connection that negotiates it is MQTT.
const ALPN = "mqtt"

// Certificate serves a certificate and key kept in files, reloading them
// when either file changes: it looks at most once a second, on a
// handshake. A pair that fails to load leaves the previous one in use and
// is logged once per change.
type Certificate struct {
	certFile, keyFile string
	log               *slog.Logger

	mu       sync.Mutex
	cert     *tls.Certificate
	modTimes [2]time.Time
	checked  time.Time
	failed   [2]time.Time // the mod times of the last pair that failed
	now      func() time.Time
}

// LoadCertificate loads the pair; it fails if they do not load now.
func LoadCertificate(certFile, keyFile string, log *slog.Logger) (*Certificate, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Certificate{certFile: certFile, keyFile: keyFile, log: log, now: time.Now}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Certificate) stat() ([2]time.Time, error) {
	var m [2]time.Time
	for i, f := range []string{c.certFile, c.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return m, err
		}
		m[i] = fi.ModTime()
	}
	return m, nil
}

func (c *Certificate) load() error {
	m, err := c.stat()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("load %s and %s: %w", c.certFile, c.keyFile, err)
	}
	c.cert, c.modTimes = &cert, m
	return nil
}

// Get is a tls.Config GetCertificate.
func (c *Certificate) Get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); now.Sub(c.checked) >= time.Second {
		c.checked = now
		if m, err := c.stat(); err == nil && m != c.modTimes && m != c.failed {
			if err := c.load(); err != nil {
				c.failed = m
				c.log.Error("TLS certificate not reloaded; the previous one stays in use", "err", err)
			} else {
				c.log.Info("TLS certificate reloaded", "cert", c.certFile)
			}
		}
	}
	if c.cert == nil {
		return nil, errors.New("no certificate")
	}
	return c.cert, nil
}

// ServerConfig is the TLS configuration of a device listener: TLS 1.2 or
// later, the certificate from c, and ALPN offering MQTT and HTTP/1.1 (for
// WebSocket), so that one port can serve both. A client certificate is
// asked for but not required, and not verified here: which authorities a
// device's certificate may chain to depends on its tenant, known only from
// its CONNECT (or SNI), so the ingress verifies it at admission.
func ServerConfig(c *Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: c.Get,
		NextProtos:     []string{ALPN, "http/1.1"},
		ClientAuth:     tls.RequestClientCert,
	}
}

// CheckHello returns a copy of base that calls check with each
// ClientHello before the handshake goes on: an error from check ends the
// handshake there, before the key exchange and the certificate's
// signature (the expensive part), with an alert. A GetConfigForClient
// base already has runs after check.
func CheckHello(base *tls.Config, check func(*tls.ClientHelloInfo) error) *tls.Config {
	cfg := base.Clone()
	next := base.GetConfigForClient
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if err := check(hello); err != nil {
			return nil, err
		}
		if next != nil {
			return next(hello)
		}
		return nil, nil
	}
	return cfg
}

// TLSState is the TLS state of a connection, looking through the wrappers
// this package puts around connections; nil for a connection without TLS.
func TLSState(c net.Conn) *tls.ConnectionState {
	for {
		switch v := c.(type) {
		case *tls.Conn:
			st := v.ConnectionState()
			return &st
		case *peekedConn:
			c = v.Conn
		case *wsConn:
			c = v.ws.NetConn()
		case *proxyConn:
			if v.key != nil {
				return v.forwardedState()
			}
			c = v.Conn
		default:
			return nil
		}
	}
}

// ServerName is the name a device asked for in TLS (SNI); "" for a
// connection without TLS or without SNI.
func ServerName(c net.Conn) string {
	if st := TLSState(c); st != nil {
		return st.ServerName
	}
	return ""
}

// PeerCertificates is the certificate chain a device presented in TLS,
// leaf first, unverified; nil without one.
func PeerCertificates(c net.Conn) []*x509.Certificate {
	if st := TLSState(c); st != nil {
		return st.PeerCertificates
	}
	return nil
}

// TenantFromServerName is the tenant a device reached through its own
// endpoint, <tenant>.<domain>; "" when the name is not under domain.
func TenantFromServerName(name, domain string) string {
	if domain == "" {
		return ""
	}
	tenant, ok := strings.CutSuffix(strings.ToLower(strings.TrimSuffix(name, ".")), "."+strings.ToLower(domain))
	if !ok || tenant == "" || strings.Contains(tenant, ".") {
		return ""
	}
	return tenant
}

// Unwrap returns the connection c is built on: a TLS connection's, a
// WebSocket's, or that of one of this package's wrappers (or of any
// connection with a NetConn method); nil when c wraps nothing known. The
// ingress walks down with it to the connection a listener accepted.
func Unwrap(c net.Conn) net.Conn {
	switch v := c.(type) {
	case *tls.Conn:
		return v.NetConn()
	case *peekedConn:
		return v.Conn
	case *wsConn:
		return v.ws.NetConn()
	case *proxyConn:
		return v.Conn
	case interface{ NetConn() net.Conn }:
		return v.NetConn()
	}
	return nil
}
