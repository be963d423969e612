package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/smtp"
	"net/url"
	"time"
)

// SMTP sends through an SMTP server. It is written on the standard
// library's net/smtp: the hub sends a handful of short messages (no
// attachments, no pooling, no DKIM of its own), which net/smtp and
// mime/multipart cover in a page, without a dependency to follow.
type SMTP struct {
	addr     string // host:port
	host     string
	implicit bool // smtps: TLS from the first byte
	user     string
	pass     string
	from     string
	fromAddr string
	tls      *tls.Config
	timeout  time.Duration
	log      *slog.Logger
}

var _ Mailer = (*SMTP)(nil)

// SMTPConfig is an SMTP mailer's settings.
type SMTPConfig struct {
	// URL is smtp://[user:password@]host[:port] (port 587 unless given;
	// STARTTLS is required unless host is a loopback address) or
	// smtps://[user:password@]host[:port] (TLS from the start, port 465
	// unless given).
	URL string
	// From is the sender, "Name <address>" or an address.
	From string
	// TLS, if set, is the base of the TLS configuration (tests give their
	// CA in RootCAs); ServerName is always the URL's host.
	TLS *tls.Config
	// Timeout bounds one message's whole exchange; 30 s if zero.
	Timeout time.Duration
	Log     *slog.Logger
}

// NewSMTP checks the settings; it does not connect.
func NewSMTP(cfg SMTPConfig) (*SMTP, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, errors.New("ROOST_SMTP_URL: not a URL like smtp://user:password@host:587")
	}
	s := &SMTP{from: cfg.From, timeout: cfg.Timeout, log: cfg.Log}
	port := ""
	switch u.Scheme {
	case "smtp":
		port = "587"
	case "smtps":
		port, s.implicit = "465", true
	default:
		return nil, errors.New("ROOST_SMTP_URL: must start with smtp:// (STARTTLS) or smtps:// (implicit TLS)")
	}
	s.host = u.Hostname()
	if s.host == "" {
		return nil, errors.New("ROOST_SMTP_URL: names no host")
	}
	if p := u.Port(); p != "" {
		port = p
	}
	s.addr = net.JoinHostPort(s.host, port)
	if u.User != nil {
		s.user = u.User.Username()
		s.pass, _ = u.User.Password()
	}
	from, err := parseFrom(cfg.From)
	if err != nil {
		return nil, err
	}
	s.fromAddr = from
	if cfg.TLS != nil {
		s.tls = cfg.TLS.Clone()
	} else {
		s.tls = &tls.Config{}
	}
	s.tls.ServerName = s.host
	s.tls.MinVersion = tls.VersionTLS12
	if s.timeout == 0 {
		s.timeout = 30 * time.Second
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Send hands the message to the server: one connection per message.
func (s *SMTP) Send(ctx context.Context, m Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	raw, err := compose(s.from, m, time.Now())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.send(ctx, m.To, raw); err != nil {
		return fmt.Errorf("send mail through %s: %w", s.addr, err)
	}
	s.log.Info("mail sent", "to", m.To, "subject", m.Subject, "server", s.addr)
	return nil
}

func (s *SMTP) send(ctx context.Context, to string, raw []byte) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// Closing the connection when ctx ends unblocks any read or write.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if s.implicit {
		tc := tls.Client(conn, s.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		conn = tc
	}
	c, err := smtp.NewClient(conn, s.host)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		return err
	}
	if !s.implicit {
		if ok, _ := c.Extension("STARTTLS"); ok {
			if err := c.StartTLS(s.tls); err != nil {
				return err
			}
		} else if !isLoopback(s.host) {
			return errors.New("the server offers no STARTTLS; use smtps:// or a server that does")
		}
	}
	if s.user != "" {
		// PlainAuth itself refuses to send the password unencrypted to a
		// host other than localhost.
		if err := c.Auth(smtp.PlainAuth("", s.user, s.pass, s.host)); err != nil {
			return err
		}
	}
	if err := c.Mail(s.fromAddr); err != nil {
		return err
	}
	if err := c.Rcpt(to); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(raw); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
