package dataout

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/roosthub/roost/tenants"
)

// Kafka is a tenant's Kafka cluster opened for producing: its settings
// and its SASL password in the clear.
type Kafka struct {
	tenants.Kafka
	Password string
}

// The kinds of failure only a Kafka destination reports.
const (
	ErrorAuth  ErrorKind = "auth"  // SASL authentication failed
	ErrorKafka ErrorKind = "kafka" // the cluster refused the records (unknown topic, not authorized, too large…)
)

func passwordContext(tenant, id string) string { return tenant + "/" + id + "/password" }

// SealPassword seals a Kafka destination's SASL password for its row.
func (s *Sealer) SealPassword(tenant, id, password string) string {
	return s.Seal([]byte(password), passwordContext(tenant, id))
}

// openKafka opens a Kafka destination's sealed password.
func (s *Sealer) openKafka(tenant string, d tenants.Destination) (Webhook, error) {
	if d.Kafka == nil {
		return Webhook{}, fmt.Errorf("destination %s: no Kafka settings", d.ID)
	}
	k := &Kafka{Kafka: *d.Kafka}
	if d.Kafka.SASL != nil {
		p, err := s.Open(d.Sealed.Password, passwordContext(tenant, d.ID))
		if err != nil {
			return Webhook{}, fmt.Errorf("destination %s: password: %w", d.ID, err)
		}
		k.Password = string(p)
	}
	return Webhook{Kafka: k}, nil
}

// CheckBrokers checks a Kafka destination's bootstrap servers before
// they are saved: no refused literal address unless allowed, and TLS
// unless every server is allowed or the hub is in development (SASL PLAIN
// sends its password as is). Names, and the addresses the cluster
// advertises, are checked at every connection (see DialContext).
func (g *Guard) CheckBrokers(brokers []string, useTLS bool) error {
	allAllowed := true
	for _, b := range brokers {
		host, _, err := net.SplitHostPort(b)
		if err != nil {
			return fmt.Errorf("%q is not host:port", b)
		}
		if a, err := netip.ParseAddr(host); err == nil && Refused(a) && !g.allowedName(host) {
			return fmt.Errorf("%w: %s is not a public address", ErrRefusedAddress, host)
		}
		if g.isOperatorKafkaName(b) {
			return fmt.Errorf("%w: %s", ErrOperatorKafka, b)
		}
		allAllowed = allAllowed && g.allowedName(host)
	}
	if !useTLS && !allAllowed && !g.AllowHTTP {
		return errors.New("tls is required (plain connections only to hosts in ROOST_WEBHOOK_ALLOW_HOSTS, or in development)")
	}
	return nil
}

// producers keeps one Kafka client per destination, made on first use
// and dropped after a failure, a change of its settings, or a while
// unused.
type producers struct {
	mu      sync.Mutex
	clients map[string]*producer // tenant/destination → client
	closed  bool
	wg      sync.WaitGroup // clients being closed in the background
}

type producer struct {
	key  string // the settings it was made with, hashed
	cl   *kgo.Client
	used time.Time
	// dialErr is the last failed connection's error: produce failures
	// say "timed out" when the cause was the dial (or the TLS or SASL
	// handshake), which the status should name instead.
	dialErr atomic.Pointer[error]
	// dialed: the last connection's dial (and TLS handshake) succeeded,
	// so a failure of the connection after it is the SASL handshake's
	// (some brokers just close the connection on a wrong password).
	dialed atomic.Bool
	sasl   bool
}

// errAuth marks a connection that failed in its SASL handshake.
var errAuth = errors.New("SASL authentication failed")

// kafkaMaxReadBytes bounds each response read from a tenant's broker.
const kafkaMaxReadBytes = 1 << 20

// producerIdle is how long an unused client stays open.
const producerIdle = 5 * time.Minute

func (ps *producers) get(s *Sender, id string, k *Kafka) (*producer, error) {
	sum := sha256.New()
	_ = json.NewEncoder(sum).Encode(k)
	key := hex.EncodeToString(sum.Sum(nil))
	now := time.Now()
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.closed {
		return nil, errors.New("sender closed")
	}
	if ps.clients == nil {
		ps.clients = map[string]*producer{}
	}
	for other, p := range ps.clients {
		if other != id && now.Sub(p.used) > producerIdle {
			ps.dropLocked(other)
		}
	}
	if p := ps.clients[id]; p != nil {
		if p.key == key {
			p.used = now
			return p, nil
		}
		ps.dropLocked(id)
	}
	p := &producer{key: key, used: now, sasl: k.SASL != nil}
	cl, err := kgo.NewClient(s.kafkaOptions(k, p)...)
	if err != nil {
		return nil, err
	}
	p.cl = cl
	ps.clients[id] = p
	return p, nil
}

// drop closes a destination's client if it is still p.
func (ps *producers) drop(id string, p *producer) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.clients[id] == p {
		ps.dropLocked(id)
	}
}

func (ps *producers) dropLocked(id string) {
	p := ps.clients[id]
	delete(ps.clients, id)
	ps.wg.Add(1)
	go func() {
		defer ps.wg.Done()
		p.cl.Close() // fails what it still buffers; may wait for requests in flight
	}()
}

func (ps *producers) close() {
	ps.mu.Lock()
	ps.closed = true
	for id := range ps.clients {
		ps.dropLocked(id)
	}
	ps.mu.Unlock()
	ps.wg.Wait()
}

// kafkaOptions configures a client for a destination: every connection,
// to the bootstrap servers and to the brokers the cluster advertises,
// goes through the guard; acks from all in-sync replicas; idempotent (the
// default), so retries inside the client neither duplicate nor reorder.
func (s *Sender) kafkaOptions(k *Kafka, p *producer) []kgo.Opt {
	var tlsCfg *tls.Config
	if k.TLS {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: s.cfg.RootCAs, ServerName: k.ServerName}
		if k.CA != "" {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM([]byte(k.CA))
			tlsCfg.RootCAs = pool
		}
	}
	timeout := s.cfg.Timeout
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		conn, err := s.cfg.Guard.DialKafka(ctx, network, addr)
		if err == nil && tlsCfg != nil {
			c := tlsCfg.Clone()
			if c.ServerName == "" {
				c.ServerName, _, _ = net.SplitHostPort(addr)
			}
			tc := tls.Client(conn, c)
			if err = tc.HandshakeContext(ctx); err != nil {
				conn.Close()
			} else {
				conn = tc
			}
		}
		p.dialed.Store(err == nil)
		if err != nil {
			p.dialErr.Store(&err)
			return nil, err
		}
		return conn, nil
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(k.Brokers...),
		kgo.DefaultProduceTopic(k.Topic),
		kgo.Dialer(dial),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), // by key: a device's records share a partition
		kgo.ProducerLinger(0),
		kgo.RecordDeliveryTimeout(max(timeout, time.Second)), // franz-go's least
		kgo.ProduceRequestTimeout(max(timeout, time.Second)),
		kgo.RetryTimeout(timeout),
		kgo.SoftwareNameAndVersion("roost", "1"),
		kgo.WithHooks(connectHook{p}),
		// A hostile broker may answer with a length of up to 100 MiB
		// (franz-go's default), which the client allocates before
		// reading; a producer's answers are small.
		kgo.BrokerMaxReadBytes(kafkaMaxReadBytes),
		kgo.FetchMaxBytes(kafkaMaxReadBytes),
	}
	if k.SASL != nil {
		opts = append(opts, kgo.SASL(mechanism(k)))
	}
	return opts
}

// connectHook records why a connection failed (the SASL handshake runs
// after the dial).
type connectHook struct{ p *producer }

func (h connectHook) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err == nil {
		return
	}
	if h.p.sasl && h.p.dialed.Load() && !errors.Is(err, kerr.SaslAuthenticationFailed) {
		err = fmt.Errorf("%w: %w", errAuth, err)
	}
	h.p.dialErr.Store(&err)
}

func mechanism(k *Kafka) sasl.Mechanism {
	switch k.SASL.Mechanism {
	case tenants.SASLScramSHA256:
		return scram.Auth{User: k.SASL.Username, Pass: k.Password}.AsSha256Mechanism()
	case tenants.SASLScramSHA512:
		return scram.Auth{User: k.SASL.Username, Pass: k.Password}.AsSha512Mechanism()
	}
	return plain.Auth{User: k.SASL.Username, Pass: k.Password}.AsMechanism()
}

// KafkaRecord is the value of the record a message becomes: the message
// as a webhook batch carries it, with the tenant and destination beside.
func KafkaRecord(b Batch, m Message) []byte {
	out := make([]byte, 0, 224+len(b.Tenant)+len(b.Destination)+len(m.ID)+len(m.Topic)+len(m.Payload)*4/3+len(m.Device)+len(m.ClientID))
	out = append(out, `{"tenant":`...)
	out = appendString(out, b.Tenant)
	out = append(out, `,"destination":`...)
	out = appendString(out, b.Destination)
	out = append(out, ',')
	out = appendFields(out, m)
	return append(out, '}')
}

// produce sends a batch to a tenant's Kafka as one record per message,
// keyed by device, and waits until the cluster took them all (acks from
// all in-sync replicas) or the timeout passed. A failure fails the whole
// batch: the outbox sends it again, so records the cluster took are
// duplicated (at least once), but the first copies keep each device's
// order.
func (s *Sender) produce(ctx context.Context, k *Kafka, b Batch) Attempt {
	if err := s.cfg.Guard.CheckBrokers(k.Brokers, k.TLS); err != nil {
		kind := ErrorURL
		if errors.Is(err, ErrRefusedAddress) {
			kind = ErrorRefused
		}
		return Attempt{Kind: kind, Err: err}
	}
	id := b.Tenant + "/" + b.Destination
	p, err := s.kafka.get(s, id, k)
	if err != nil {
		return Attempt{Kind: ErrorConnect, Err: err}
	}
	p.dialErr.Store(nil)
	recs := make([]*kgo.Record, len(b.Messages))
	for i, m := range b.Messages {
		// The record's timestamp is left to the client (now): franz-go
		// times records out from it, and a message retried for an hour
		// would time out at once. The message's time is in the value.
		recs[i] = &kgo.Record{Key: []byte(m.Device), Value: KafkaRecord(b, m),
			Headers: []kgo.RecordHeader{{Key: "roost-id", Value: []byte(m.ID)}, {Key: "roost-topic", Value: []byte(m.Topic)}}}
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.cl.ProduceSync(ctx, recs...).FirstErr() }()
	select {
	case err = <-done:
	case <-time.After(s.cfg.Timeout + time.Second):
		// An idempotent producer does not fail a record sent without an
		// answer yet; closing the client does.
		err = context.DeadlineExceeded
	}
	a := Attempt{Latency: time.Since(start)}
	if err == nil {
		a.Produced = true
		return a
	}
	s.kafka.drop(id, p) // a fresh client next time: new connections, new producer id
	if de := p.dialErr.Load(); de != nil && !errors.Is(err, ErrRefusedAddress) {
		err = fmt.Errorf("%w (%v)", *de, err)
	}
	a.Err, a.Kind = err, kafkaKind(err)
	return a
}

// kafkaKind names a produce failure.
func kafkaKind(err error) ErrorKind {
	var ke *kerr.Error
	switch {
	case errors.Is(err, ErrRefusedAddress):
		return ErrorRefused
	case errors.Is(err, errAuth), errors.Is(err, kerr.SaslAuthenticationFailed), errors.Is(err, kerr.IllegalSaslState), errors.Is(err, kerr.UnsupportedSaslMechanism):
		return ErrorAuth
	case errors.As(err, &ke):
		return ErrorKafka
	}
	return classify(err)
}
