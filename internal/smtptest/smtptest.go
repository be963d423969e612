// Package smtptest is a small SMTP server for tests: just enough of RFC
// 5321, 3207 and 4954 (EHLO, STARTTLS, AUTH PLAIN, MAIL, RCPT, DATA, QUIT)
// on a loopback port to receive what a mailer sends.
package smtptest

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Config is what the server offers.
type Config struct {
	Cert     tls.Certificate
	STARTTLS bool // offer STARTTLS
	Implicit bool // TLS from the first byte
	User     string
	Pass     string // AUTH PLAIN required when User is set
}

// Session is one delivered message and how it came.
type Session struct {
	TLS, Authed bool
	From        string
	Rcpt        []string
	Data        []byte
}

// Server is a running test SMTP server.
type Server struct {
	Port     string
	mu       sync.Mutex
	sessions []Session
}

// Messages returns what was delivered so far.
func (s *Server) Messages() []Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Session(nil), s.sessions...)
}

// Only returns the one message delivered, failing the test if there were
// more or none.
func (s *Server) Only(t *testing.T) Session {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sessions) != 1 {
		t.Fatalf("the server saw %d delivered messages, want 1", len(s.sessions))
	}
	return s.sessions[0]
}

// Start serves just enough SMTP (RFC 5321, 3207, 4954) for the
// mailer: EHLO, STARTTLS, AUTH PLAIN, MAIL, RCPT, DATA, QUIT.
func Start(t *testing.T, cfg Config) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cfg.Cert}}
	if cfg.Implicit {
		ln = tls.NewListener(ln, tlsCfg)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	srv := &Server{Port: port}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				srv.serve(c, cfg, tlsCfg)
			}()
		}
	}()
	return srv
}

func (s *Server) serve(c net.Conn, cfg Config, tlsCfg *tls.Config) {
	_, isTLS := c.(*tls.Conn)
	r, w := bufio.NewReader(c), bufio.NewWriter(c)
	say := func(line string) { w.WriteString(line + "\r\n"); w.Flush() }
	var sess Session
	say("220 test ESMTP")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
		switch verb {
		case "EHLO":
			w.WriteString("250-test\r\n")
			if cfg.STARTTLS && !isTLS {
				w.WriteString("250-STARTTLS\r\n")
			}
			if cfg.User != "" {
				w.WriteString("250-AUTH PLAIN\r\n")
			}
			say("250 8BITMIME")
		case "STARTTLS":
			say("220 go ahead")
			tc := tls.Server(c, tlsCfg)
			if err := tc.Handshake(); err != nil {
				return
			}
			c, isTLS = tc, true
			r, w = bufio.NewReader(tc), bufio.NewWriter(tc)
		case "AUTH":
			f := strings.Fields(line)
			if len(f) != 3 || f[1] != "PLAIN" {
				say("504 PLAIN only")
				continue
			}
			b, _ := base64.StdEncoding.DecodeString(f[2])
			if string(b) != "\x00"+cfg.User+"\x00"+cfg.Pass {
				say("535 5.7.8 authentication failed")
				continue
			}
			sess.Authed = true
			say("235 ok")
		case "MAIL":
			if cfg.User != "" && !sess.Authed {
				say("530 authenticate first")
				continue
			}
			sess.From = strings.Trim(strings.TrimPrefix(line[5:], "FROM:"), "<> ")
			if i := strings.Index(sess.From, ">"); i >= 0 {
				sess.From = sess.From[:i]
			}
			say("250 ok")
		case "RCPT":
			sess.Rcpt = append(sess.Rcpt, strings.Trim(strings.TrimPrefix(line[5:], "TO:"), "<> "))
			say("250 ok")
		case "DATA":
			say("354 go on")
			var data strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				data.WriteString(strings.TrimPrefix(l, "."))
			}
			sess.Data, sess.TLS = []byte(data.String()), isTLS
			s.mu.Lock()
			s.sessions = append(s.sessions, sess)
			s.mu.Unlock()
			say("250 queued")
		case "QUIT":
			say("221 bye")
			return
		default:
			say("250 ok")
		}
	}
}

// Certificate makes a self-signed certificate for 127.0.0.1 and a pool
// that trusts it.
func Certificate(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test smtp"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
