package dataout

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Webhook is a destination opened for sending: where a batch goes and
// how it is signed, or, when Kafka is set, the tenant's Kafka cluster the
// batch is produced to instead.
type Webhook struct {
	URL     string
	Secret  string
	Headers map[string]string
	Kafka   *Kafka
}

// ErrorKind names why an attempt failed before the receiver answered.
type ErrorKind string

// The kinds of failure an attempt reports.
const (
	ErrorRefused ErrorKind = "refused_address" // the guard refused the address
	ErrorTLS     ErrorKind = "tls"             // the TLS handshake or certificate failed
	ErrorTimeout ErrorKind = "timeout"         // no answer within the timeout
	ErrorConnect ErrorKind = "connect"         // no connection (refused, reset, DNS)
	ErrorURL     ErrorKind = "url"             // the URL is not one the guard accepts
	ErrorStatus  ErrorKind = "status"          // the receiver answered, but not 2xx
)

// Attempt is the outcome of one request.
type Attempt struct {
	// Status is the receiver's HTTP status; 0 if it did not answer.
	Status int
	// Latency is from sending to the receiver's answer (or the failure).
	Latency time.Duration
	// Kind and Err say why the attempt failed; empty and nil when the
	// receiver answered 2xx.
	Kind ErrorKind
	Err  error
	// RetryAfter is the receiver's Retry-After on 429 or 503, if any.
	RetryAfter time.Duration
	// Produced: a Kafka cluster took the batch (a Kafka destination has
	// no status).
	Produced bool
}

// OK reports whether the receiver took the batch (answered 2xx, or the
// Kafka cluster acknowledged every record).
func (a Attempt) OK() bool { return a.Err == nil && (a.Produced || a.Status >= 200 && a.Status < 300) }

// SenderConfig configures a sender.
type SenderConfig struct {
	// Guard decides which addresses webhooks reach; required.
	Guard *Guard
	// Timeout bounds one request, connecting to reading the answer's
	// status and up to 64 KiB of body (for Kafka: producing a batch, all
	// replicas acknowledging); default 10s.
	Timeout time.Duration
	// Now is the clock the signature's timestamp comes from.
	Now func() time.Time
	// RootCAs, if set, are the CAs receivers' certificates must chain to
	// (tests); nil: the system's.
	RootCAs *x509.CertPool
	// UserAgent names the hub in requests.
	UserAgent string
}

// Sender sends signed webhook requests, and produces to tenants' Kafka
// clusters. It is safe for concurrent use.
type Sender struct {
	cfg    SenderConfig
	client *http.Client
	kafka  producers
}

// Close closes the Kafka clients the sender keeps.
func (s *Sender) Close() { s.kafka.close() }

// NewSender returns a sender.
func NewSender(cfg SenderConfig) (*Sender, error) {
	if cfg.Guard == nil {
		return nil, errors.New("dataout: sender without a guard")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "Roost-Webhook/1"
	}
	tr := &http.Transport{
		// Never a proxy from the environment: the guard must see the
		// receiver's address, not the proxy's.
		Proxy:                  nil,
		DialContext:            cfg.Guard.DialContext,
		TLSClientConfig:        &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    cfg.Timeout,
		ResponseHeaderTimeout:  cfg.Timeout,
		MaxResponseHeaderBytes: 64 << 10, // a receiver's answer is a status, not a payload
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        90 * time.Second,
		ForceAttemptHTTP2:      true,
	}
	return &Sender{cfg: cfg, client: &http.Client{
		Transport: tr,
		Timeout:   cfg.Timeout,
		// Redirects are not followed: a receiver could point the hub at
		// an address the URL check never saw. A 3xx is a failed attempt.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
}

// Guard returns the sender's guard, for checking URLs before saving them.
func (s *Sender) Guard() *Guard { return s.cfg.Guard }

// Send makes one signed request carrying b to w and reports how it went.
// It never retries: the caller's policy does.
func (s *Sender) Send(ctx context.Context, w Webhook, b Batch) Attempt {
	if w.Kafka != nil {
		return s.produce(ctx, w.Kafka, b)
	}
	if err := s.cfg.Guard.CheckURL(w.URL); err != nil {
		kind := ErrorURL
		if errors.Is(err, ErrRefusedAddress) {
			kind = ErrorRefused
		}
		return Attempt{Kind: kind, Err: err}
	}
	body := Body(b)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return Attempt{Kind: ErrorURL, Err: err}
	}
	for k, v := range w.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", s.cfg.UserAgent)
	req.Header.Set(SignatureHeader, Sign(w.Secret, s.cfg.Now(), body))
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			// Its text is shown to every member (the destination's last
			// error): the URL's path, often a credential, is not.
			ue.URL = OriginOf(ue.URL)
		}
		return Attempt{Latency: time.Since(start), Kind: classify(err), Err: err}
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	resp.Body.Close()
	a := Attempt{Status: resp.StatusCode, Latency: time.Since(start)}
	if !a.OK() {
		a.Kind, a.Err = ErrorStatus, fmt.Errorf("the receiver answered %d", resp.StatusCode)
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			if n, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After"))); err == nil && n > 0 {
				a.RetryAfter = time.Duration(n) * time.Second
			}
		}
	}
	return a
}

// classify names a transport failure.
func classify(err error) ErrorKind {
	var (
		cert    *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		alert   tls.AlertError
		rec     tls.RecordHeaderError
		ne      net.Error
	)
	switch {
	case errors.Is(err, ErrRefusedAddress):
		return ErrorRefused
	case errors.As(err, &cert), errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &alert), errors.As(err, &rec):
		return ErrorTLS
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return ErrorTimeout
	}
	return ErrorConnect
}

// OriginOf is a webhook URL as anyone may see it: its scheme and host,
// then "/…", without the path, query or credentials (often a secret);
// "…" for one that does not parse.
func OriginOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "…"
	}
	return u.Scheme + "://" + u.Host + "/…"
}
