package broker

import (
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/roosthub/roost/internal/lru"
	"github.com/roosthub/roost/transport"
)

// Connection attempts are also bounded in rate, before any work is done
// for them: per source address (see sourceOf), checked as the connection
// is accepted, before a byte of it is read — for a connection behind a
// balancer speaking the PROXY protocol, as soon as its header names the
// device's address, before its TLS handshake or CONNECT —, and per tenant
// endpoint (SNI <tenant>.<Domain>), checked when the TLS ClientHello names
// it, before the key exchange (see Hub.TLSConfig). An attempt over either
// rate is closed at once (a TCP reset: no TIME_WAIT left here), counted in
// roost_handshakes_dropped_total by reason, and logged in the handshake
// bounds' summary line. A storm from one address so costs an accept and a
// close per attempt, not a TLS handshake and a CONNECT read.
//
// The rate cannot see credentials: it is a per-address (per-endpoint)
// bound on attempts, not an authentication throttle (that is authLimit).
// So that it refuses valid devices as seldom as it can, an attempt that
// becomes a connection (admitted by its tenant's broker here) gives its
// token back: the rate bounds the attempts that end in nothing — failed
// credentials, silent or malformed sockets, refusals by the tenant's own
// connect_rate and max_connections quotas — while a NAT's devices that all
// connect cost it only the tokens of those in handshake at once (at most
// HandshakesPerAddress). Exempting an address outright once a device
// authenticated from it was rejected: anyone with a free tenant could
// earn the exemption for the address they attack from.
//
// A connection forwarded by another node of the fleet is not charged
// again at its home: the node it reached charged the device's address.
type attemptRate struct {
	rate, burst float64 // tokens a second, and at most
	buckets     *lru.Cache[string, *bucket]
}

// rateTable bounds the addresses (and endpoints) whose buckets are kept;
// the least recently seen is forgotten first. A bucket left alone for
// burst/rate seconds is full again, as good as forgotten, so forgetting
// one loses something only when more than rateTable addresses attempted
// within that time (5 s by default): an attacker holding that many
// addresses gets a burst from each of them anyway. At about 200 bytes an
// entry the table stays under 15 MB.
const rateTable = 65_536

// bucket is one key's token bucket.
type bucket struct {
	tokens float64
	at     time.Time // when tokens was last brought up to date
}

// newAttemptRate returns a rate of rate attempts a second with bursts of
// burst; nil (no bound) if rate is not positive.
func newAttemptRate(rate, burst int) *attemptRate {
	if rate <= 0 {
		return nil
	}
	return &attemptRate{rate: float64(rate), burst: float64(max(burst, 1)), buckets: lru.New[string, *bucket](rateTable)}
}

func (r *attemptRate) fill(b *bucket, now time.Time) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(r.burst, b.tokens+d.Seconds()*r.rate)
		b.at = now
	}
}

// take spends one of key's tokens; false if it has none (the attempt is
// refused). Not safe for concurrent use: the handshakes' lock guards it.
func (r *attemptRate) take(key string, now time.Time) bool {
	if r == nil {
		return true
	}
	b, ok := r.buckets.Get(key)
	if !ok {
		b = &bucket{tokens: r.burst, at: now}
		r.buckets.Add(key, b)
	}
	r.fill(b, now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// give returns a token take spent for an attempt that became a connection.
func (r *attemptRate) give(key string, now time.Time) {
	if r == nil {
		return
	}
	if b, ok := r.buckets.Get(key); ok {
		r.fill(b, now)
		b.tokens = min(r.burst, b.tokens+1)
	}
}

// size is the number of buckets kept.
func (r *attemptRate) size() int {
	if r == nil {
		return 0
	}
	return r.buckets.Len()
}

// errRateEndpoint ends a TLS handshake at its ClientHello when the
// endpoint it names is over its attempt rate.
var errRateEndpoint = errors.New("too many connection attempts to this endpoint")

// TLSConfig returns base with a check of each ClientHello added, for the
// TLS listeners of devices: a handshake naming a tenant's endpoint (SNI
// <tenant>.<Domain>) over the endpoint's attempt rate (or its bound of
// connections in handshake) ends there, before the key exchange — the
// expensive part. Give every device TLS listener (MQTT and WebSocket) the
// config it returns; base is not changed.
func (h *Hub) TLSConfig(base *tls.Config) *tls.Config {
	return transport.CheckHello(base, func(hello *tls.ClientHelloInfo) error {
		tenant := transport.TenantFromServerName(hello.ServerName, h.cfg.Domain)
		if tenant == "" {
			return nil
		}
		if !h.in.hs.hello(hello.Conn, tenant) {
			return errRateEndpoint
		}
		return nil
	})
}

// hello counts a TLS handshake that reached a tenant's endpoint against
// the endpoint's attempt rate and its bound of connections in handshake,
// as soon as the ClientHello names it; false if it is refused (the
// handshake ends). conn is the connection under TLS.
func (hs *handshakes) hello(conn net.Conn, tenant string) bool {
	now := hs.now()
	hs.mu.Lock()
	var p *pending
	if g := gatedBelow(conn); g != nil {
		p = g.p
	} else {
		p = hs.byConn[physical(conn)]
	}
	source := ""
	if p != nil {
		source = p.source
	}
	if !hs.endpointRate.take(tenant, now) {
		hs.noteLocked(refusedRatePerEndpoint, source, now)
		hs.mu.Unlock()
		return false
	}
	if p != nil && hs.endpointRate != nil {
		p.chargedEndpoint = tenant
	}
	hs.mu.Unlock()
	return p == nil || hs.enterEndpoint(p, tenant)
}

// rateKeys is how many addresses and endpoints the attempt rates remember.
func (hs *handshakes) rateKeys() (addresses, endpoints int) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return hs.addressRate.size(), hs.endpointRate.size()
}

// admitted gives back the tokens p's attempt took: it became a
// connection.
func (hs *handshakes) admitted(p *pending) {
	now := hs.now()
	hs.mu.Lock()
	if p.chargedSource != "" {
		hs.addressRate.give(p.chargedSource, now)
	}
	if p.chargedEndpoint != "" {
		hs.endpointRate.give(p.chargedEndpoint, now)
	}
	p.chargedSource, p.chargedEndpoint = "", ""
	hs.mu.Unlock()
}

// refuse closes a connection refused before any work: with a TCP reset,
// so that a storm of refused attempts leaves no TIME_WAIT sockets here.
func refuse(c net.Conn) {
	if tc, ok := physical(c).(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
