package broker

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/transport"
)

// Config is what the data plane needs.
type Config struct {
	Directory Directory
	// Changes delivers the directory's committed changes; nil means none
	// (entries then live for CacheTTL).
	Changes interface {
		Subscribe(func(tenants.Change)) (cancel func())
	}
	Log *slog.Logger

	// ConnectTimeout bounds the wait for the first packet: 10s if zero.
	ConnectTimeout time.Duration
	// MaxConnectSize caps the first packet before it is read: 512 KiB if
	// zero (room for 64 KiB usernames and passwords and a Will).
	MaxConnectSize int
	// WriteTimeout bounds each write to a client: 5s if zero.
	WriteTimeout time.Duration
	// IdleTimeout is how long an instance with nothing in it stays up: 5m
	// if zero.
	IdleTimeout time.Duration
	// MaxHandshakes bounds connections not yet past CONNECT (a TLS
	// handshake, a PROXY header, the CONNECT, its authentication): 10,000
	// if zero. When they are all taken, the oldest handshake of the
	// address holding the most is closed to make room (see handshakes).
	MaxHandshakes int
	// HandshakesPerAddress bounds those from one source address (an IPv6
	// address's /64): 256 if zero. A fleet behind one NAT connects that
	// many devices at once, and more as each handshake ends.
	HandshakesPerAddress int
	// HandshakesPerEndpoint bounds those that reached one tenant's own
	// endpoint (SNI <tenant>.<Domain>): 2,500 if zero, a quarter of the
	// default MaxHandshakes, so that a flood aimed at one tenant leaves
	// the rest to the others.
	HandshakesPerEndpoint int
	// MaxWatches bounds a tenant's open live views (the console's), and
	// MaxWatchesEach one person's: 20 and 3 if zero.
	MaxWatches, MaxWatchesEach int
	// CacheSize and CacheTTL shape the directory cache: 100,000 devices and
	// 5 minutes if zero.
	CacheSize int
	CacheTTL  time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Sessions keeps persistent sessions, their queues and retained
	// messages across restarts; nil keeps them in memory only.
	Sessions SessionStore
	// Events receives lifecycle events; nil discards them.
	Events events.Sink
	// Exporter writes messages matching export rules to Kafka; nil leaves
	// export rules without effect.
	Exporter Exporter
	// Usage records metered usage; nil counts it in memory only.
	Usage UsageStore
	// UsageInterval is how often usage is recorded: 1s if zero.
	UsageInterval time.Duration
	// Domain gives each tenant an endpoint of its own: a TLS connection
	// whose SNI is <tenant>.<Domain> belongs to that tenant before its
	// CONNECT, its username may be just the device's name, and a username
	// naming another tenant is refused. Empty: off.
	Domain string
	// WillsOnShutdown sends the Wills of the clients a closing hub
	// disconnects. Off by default: a server going away is not the device
	// going away, and its session resumes on another node.
	WillsOnShutdown bool
	// Cluster places tenants on the nodes of a fleet; nil runs every
	// tenant here.
	Cluster Cluster
}

// Hub is the data plane: the ingress and every tenant's broker instance.
type Hub struct {
	cfg Config
	log *slog.Logger
	dir *directoryCache
	now func() time.Time

	// auth slows down failed authentications.
	auth *authLimit

	hs        *handshakes
	changes   *changeApplier
	cancelSub func()
	done      chan struct{}
	wg        sync.WaitGroup

	eventPubs     chan events.Event
	eventsDropped atomic.Int64

	meters sync.Map // tenant → *meter
	// limitsOff skips the publish quotas and metering: only for the
	// benchmark that measures what they cost.
	limitsOff bool

	seenMu sync.Mutex
	seen   map[deviceKey]time.Time // last-seen times not yet written

	reg *registry

	mu        sync.Mutex
	listeners []net.Listener
	closed    bool
	// forwards are the connections forwarded to other nodes; forwardsGone
	// is closed when the last one ends while the hub closes.
	forwards     map[net.Conn]struct{}
	forwardsGone chan struct{}
	forwarded    atomic.Int64 // connections forwarded since the start
}

// New starts the data plane; Serve gives it listeners.
func New(cfg Config) (*Hub, error) {
	if cfg.Directory == nil {
		return nil, errors.New("broker: no directory")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Events == nil {
		cfg.Events = discard{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.ConnectTimeout, 10*time.Second)
	def(&cfg.WriteTimeout, 5*time.Second)
	def(&cfg.IdleTimeout, 5*time.Minute)
	def(&cfg.CacheTTL, 5*time.Minute)
	def(&cfg.UsageInterval, time.Second)
	if cfg.MaxConnectSize == 0 {
		cfg.MaxConnectSize = 512 << 10
	}
	if cfg.MaxHandshakes == 0 {
		cfg.MaxHandshakes = 10_000
	}
	if cfg.HandshakesPerAddress == 0 {
		cfg.HandshakesPerAddress = 256
	}
	if cfg.HandshakesPerEndpoint == 0 {
		cfg.HandshakesPerEndpoint = 2_500
	}
	if cfg.MaxWatches == 0 {
		cfg.MaxWatches = 20
	}
	if cfg.MaxWatchesEach == 0 {
		cfg.MaxWatchesEach = 3
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = 100_000
	}
	h := &Hub{
		cfg:       cfg,
		log:       cfg.Log,
		dir:       newDirectoryCache(cfg.Directory, cfg.CacheSize, cfg.CacheTTL, cfg.Now),
		now:       cfg.Now,
		auth:      newAuthLimit(cfg.Now),
		hs:        newHandshakes(cfg.MaxHandshakes, cfg.HandshakesPerAddress, cfg.HandshakesPerEndpoint, cfg.ConnectTimeout/2, cfg.Log),
		eventPubs: make(chan events.Event, 4096),
		done:      make(chan struct{}),
		seen:      map[deviceKey]time.Time{},
		forwards:  map[net.Conn]struct{}{},
	}
	h.reg = newRegistry(cfg, func(t tenants.Tenant) (*instance, error) { return newInstance(h, t) })
	h.changes = newChangeApplier(cfg, h.dir, h.reg)
	if cfg.Changes != nil {
		h.cancelSub = cfg.Changes.Subscribe(h.changes.onChange)
	}
	h.wg.Add(2)
	go h.publishEvents()
	go func() {
		defer h.wg.Done()
		h.changes.run(h.done)
	}()
	h.every(min(h.cfg.IdleTimeout/2, 30*time.Second), h.reapIdle)
	h.every(time.Second, h.flushSeen)
	h.every(h.cfg.UsageInterval, h.recordUsage)
	return h, nil
}

// Serve accepts MQTT connections on ln until Close. It returns nil once the
// hub is closed.
func (h *Hub) Serve(ln net.Listener) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		ln.Close()
		return nil
	}
	h.listeners = append(h.listeners, ln)
	h.wg.Add(1)
	h.mu.Unlock()
	defer h.wg.Done()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			select {
			case <-h.done:
				return nil
			default:
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() || errors.Is(err, errTooManyFiles) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				h.log.Warn("accept", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		backoff = 0
		p := h.ticket(conn)
		if p == nil {
			conn.Close()
			continue
		}
		h.wg.Add(1)
		go h.handle(conn, p)
	}
}

// ticket counts a connection as in handshake, or returns nil if it is
// refused: the count a gate below it started, or a new one.
func (h *Hub) ticket(conn net.Conn) *pending {
	if g := gatedBelow(conn); g != nil {
		return g.p
	}
	phys := physical(conn)
	p, ok := h.hs.enter(phys, phys.RemoteAddr(), transport.HeaderPending(conn))
	if !ok {
		return nil
	}
	return p
}

// ServeConn serves one device connection that arrived some other way than
// a listener given to Serve (MQTT over WebSocket), and returns when it ends.
func (h *Hub) ServeConn(conn net.Conn) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		conn.Close()
		return
	}
	h.wg.Add(1)
	h.mu.Unlock()
	p := h.ticket(conn)
	if p == nil {
		h.wg.Done()
		conn.Close()
		return
	}
	h.handle(conn, p)
}

// Close stops accepting, disconnects every client and stops every instance.
// A second Close does nothing.
func (h *Hub) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	close(h.done)
	for _, ln := range h.listeners {
		ln.Close()
	}
	h.mu.Unlock()
	h.hs.close()
	if h.cfg.Cluster != nil {
		h.endForwards()
	}
	if h.cancelSub != nil {
		h.cancelSub()
	}
	h.reg.close()
	h.wg.Wait()
	// What was noted since the last flushes.
	h.flushSeen()
	h.recordUsage()
	return nil
}

// handle takes a connection from accept to its tenant's broker; p counts
// it as in handshake until then. A panic while admitting it closes that
// connection alone.
func (h *Hub) handle(conn net.Conn, p *pending) {
	defer h.wg.Done()
	defer func() {
		if v := recover(); v != nil {
			h.log.Error("panic admitting connection", "remote", conn.RemoteAddr().String(), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			conn.Close()
		}
	}()
	endHandshake := func() { h.hs.leave(p) }
	defer endHandshake()

	// One deadline, reads and writes, covers what comes before the
	// CONNECT: a PROXY or forwarding header, the TLS handshake (a TLS
	// listener's connection does it on its first read; it is done here
	// to learn its endpoint), the CONNECT. A throttled failure is answered
	// by then too.
	conn.SetDeadline(h.now().Add(h.cfg.ConnectTimeout))
	answerBy := time.Now().Add(h.cfg.ConnectTimeout)
	if !h.hs.rekey(p, conn.RemoteAddr()) {
		conn.Close()
		return
	}
	if tc, ok := conn.(*tls.Conn); ok {
		if err := tc.HandshakeContext(p.ctx); err != nil {
			h.log.Debug("TLS handshake failed", "remote", conn.RemoteAddr().String(), "err", err)
			conn.Close()
			return
		}
	}
	if ep := transport.TenantFromServerName(transport.ServerName(conn), h.cfg.Domain); ep != "" && !h.hs.enterEndpoint(p, ep) {
		conn.Close()
		return
	}
	r := bufio.NewReaderSize(conn, 4096)
	raw, pk, err := readConnect(r, h.cfg.MaxConnectSize)
	var code packets.Code
	switch {
	case errors.As(err, &code):
		ref := refusalFor(code)
		h.log.Debug("malformed CONNECT", "remote", conn.RemoteAddr().String(), "reason", ref.String())
		writeConnack(conn, pk.ProtocolVersion, ref)
		conn.Close()
		return
	case err != nil:
		// Debug: a flood of silent sockets must not flood the log (the
		// handshake bounds log a summary).
		h.log.Debug("no CONNECT", "remote", conn.RemoteAddr().String(), "err", err)
		conn.Close()
		return
	}

	if h.cfg.Cluster != nil && h.route(conn, r, raw, pk, endHandshake) {
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, h.cfg.ConnectTimeout)
	inst, id, err := h.admit(ctx, conn, raw, pk, answerBy)
	cancel()
	if err != nil {
		var ref refusal
		if !errors.As(err, &ref) {
			h.log.Error("admit connection", "remote", conn.RemoteAddr().String(), "err", err)
			ref = serverUnavailable
		}
		conn.SetWriteDeadline(time.Now().Add(h.cfg.WriteTimeout))
		writeConnack(conn, pk.ProtocolVersion, ref)
		conn.Close()
		return
	}
	defer h.reg.releaseConn(inst)
	conn.SetDeadline(time.Time{})
	endHandshake()
	inst.serve(newDeviceConn(conn, r, raw, id, inst, h.cfg.WriteTimeout))
}

// admit authenticates a CONNECT and finds its tenant's broker, or returns
// the refusal to send.
//
// Every credential is evaluated, whatever failed before it: a valid one is
// never refused for others' failures. A failure past its streak's free
// ones (see authLimit) is answered 0x9F, late — by answerBy at the latest,
// when a silent connection would have been closed — and raises no event.
func (h *Hub) admit(ctx context.Context, conn net.Conn, raw []byte, pk packets.Packet, answerBy time.Time) (*instance, identity, error) {
	remote := conn.RemoteAddr().String()
	source := sourceOf(conn.RemoteAddr())
	tenant, device, username, ok := h.deviceOf(conn, string(pk.Connect.Username))
	if !ok {
		log := h.log.With("remote", remote, "endpoint", transport.ServerName(conn))
		return nil, identity{}, h.authFailed(ctx, log, string(pk.Connect.Username), source, answerBy,
			"connect refused: malformed username, or one naming another tenant than the endpoint")
	}
	log := h.log.With("tenant", tenant, "device", device, "remote", remote)
	t, d, cred, ok, err := h.credentials(ctx, conn, tenant, device, pk.Connect.Password)
	if err != nil {
		return nil, identity{}, err
	}
	// Events go only to tenants that exist: a made-up tenant name must not
	// create anything.
	refuse := func(r refusal) (*instance, identity, error) {
		if t.Slug != "" {
			h.emit(events.Event{Tenant: tenant, Type: events.AuthFailed, Device: device, Remote: remote, Reason: r.reason})
			h.meterOf(tenant).authFailures.Add(1)
		}
		return nil, identity{}, r
	}
	if !ok {
		if cred.why != "" {
			log = log.With("detail", cred.why)
		}
		err := h.authFailed(ctx, log, username, source, answerBy, "connect refused: bad credentials")
		if errors.Is(err, authThrottled) {
			if t.Slug != "" {
				h.meterOf(tenant).authFailures.Add(1)
			}
			return nil, identity{}, err
		}
		return refuse(badCredentials)
	}
	h.auth.succeeded(username, source)
	if t.Suspended {
		log.Info("connect refused: tenant suspended")
		return refuse(tenantSuspended)
	}

	id := identity{tenant: tenant, device: device, secret: d.SecretHash, version: pk.ProtocolVersion, key: cred.key, expires: cred.expires, leaf: cred.leaf, ca: cred.ca}
	cid := pk.Connect.ClientIdentifier
	switch {
	case cid == "" && pk.ProtocolVersion < 5 && !pk.Connect.Clean:
		// 3.1.1 §3.1.3-8: a persistent session needs an id of its own.
		log.Info("connect refused: empty client id with a persistent session")
		return refuse(clientIDRefused)
	case d.ClientIDs == tenants.ClientIDsExact && cid == "":
		id.clientID, id.assign = device, true
	case d.ClientIDs == tenants.ClientIDsExact && cid != device:
		log.Info("connect refused: client id not bound to the device", "client_id", cid)
		return refuse(clientIDRefused)
	case d.ClientIDs == tenants.ClientIDsExact:
		id.clientID = device
	}
	if limit := t.Quotas().MaxPacketSize; int64(len(raw)) > limit {
		log.Info("connect refused: CONNECT larger than max_packet_size", "size", len(raw), "limit", limit)
		h.quotaHit(tenant, device, cid, "max_packet_size", limit)
		return nil, identity{}, packetTooLarge
	}

	inst, err := h.reg.acquireConn(t)
	if err != nil {
		var ref refusal
		if errors.As(err, &ref) && (ref == quotaConnections || ref == connectRateExceeded) {
			quota, limit := "max_connections", t.Quotas().MaxConnections
			if ref == connectRateExceeded {
				quota, limit = "connect_rate", t.Quotas().ConnectRate
			}
			h.quotaHit(tenant, device, cid, quota, limit)
		}
		return nil, identity{}, err
	}
	if pk.Connect.WillFlag {
		if tenants.ValidateTopic(pk.Connect.WillTopic) != nil || !inst.mayPublish(device, pk.Connect.WillTopic) {
			h.reg.releaseConn(inst)
			log.Info("connect refused: will topic not allowed", "topic", pk.Connect.WillTopic)
			return refuse(willNotAllowed)
		}
	}
	return inst, id, nil
}

// authFailed counts a failed authentication of username from source and
// returns its refusal: badCredentials while its streaks are within their
// free failures; else authThrottled, once the delay is over (or answerBy,
// or the connection was shed). Only a streak's first throttled failure is
// logged above debug.
func (h *Hub) authFailed(ctx context.Context, log *slog.Logger, username, source string, answerBy time.Time, msg string) error {
	delay, first := h.auth.fail(username, source)
	if delay == 0 {
		log.Info(msg)
		return badCredentials
	}
	delay = min(delay, time.Until(answerBy))
	if first {
		log.Info(msg+"; too many failed attempts: this one and the next are answered late with 0x9F", "delay", delay)
	} else {
		log.Debug(msg+"; too many failed attempts", "delay", delay)
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
		case <-h.done:
		}
		t.Stop()
	}
	return authThrottled
}

// deviceOf is the tenant and device a CONNECT's username names, with the
// full username: "<tenant>/<device>", or the device's name alone on the
// tenant's own endpoint (SNI <tenant>.<Domain>), where a username naming
// another tenant is refused.
func (h *Hub) deviceOf(conn net.Conn, username string) (tenant, device, full string, ok bool) {
	tenant, device, ok = splitUsername(username)
	if endpoint := transport.TenantFromServerName(transport.ServerName(conn), h.cfg.Domain); endpoint != "" {
		switch {
		case !strings.Contains(username, "/") && tenants.ValidDeviceName(username):
			return endpoint, username, tenants.Username(endpoint, username), true
		case ok && tenant != endpoint:
			return "", "", "", false
		}
	}
	return tenant, device, username, ok
}

// credentials checks a device's secret, or the token it sent instead,
// signed by one of its registered keys. ok is false, with no error, for an
// unknown tenant, an unknown or disabled device, a wrong secret and a token
// that does not verify alike; cred says which key verified a token and
// when it expires.
func (h *Hub) credentials(ctx context.Context, conn net.Conn, tenant, device string, password []byte) (t tenants.Tenant, d tenants.Device, cred credential, ok bool, err error) {
	t, found, err := h.dir.tenant(ctx, tenant)
	if err != nil || !found {
		return t, d, cred, false, err
	}
	d, found, err = h.dir.device(ctx, tenant, device)
	if err != nil {
		return t, d, cred, false, err
	}
	// The secret is checked even for an unknown or disabled device, so all
	// refusals cost the same.
	hash := d.SecretHash
	if !found {
		hash = unknownDeviceHash
	}
	match := tenants.CheckSecret(string(password), hash)
	if !match && found && d.Enabled && tenants.LooksLikeJWT(string(password)) {
		keys, err := h.dir.deviceKeys(ctx, tenant, device)
		if err != nil {
			return t, d, cred, false, err
		}
		k, exp, verr := tenants.VerifyDeviceToken(string(password), tenant, keys, h.now())
		match, cred = verr == nil, credential{key: k.Fingerprint, expires: exp, why: errText(verr)}
	}
	if chain := transport.PeerCertificates(conn); !match && found && d.Enabled && len(chain) > 0 {
		cas, err := h.dir.authorities(ctx, tenant)
		if err != nil {
			return t, d, cred, false, err
		}
		pinned, err := h.dir.certificates(ctx, tenant, device)
		if err != nil {
			return t, d, cred, false, err
		}
		c, verr := tenants.VerifyDeviceCertificate(chain, tenant, device, cas, pinned, h.now())
		match, cred = verr == nil, credential{leaf: c.Leaf, ca: c.CA, why: errText(verr)}
	}
	return t, d, cred, found && d.Enabled && match, nil
}

// credential is what a device proved itself with, when not its secret: a
// token (the fingerprint of the key that signed it, and its expiry) or a
// client certificate (its fingerprint, and its CA's).
type credential struct {
	key      string
	expires  time.Time
	leaf, ca string
	why      string // why a token or certificate was refused, for the log
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// unknownDeviceHash is compared against when no device exists: a hash of no
// secret anyone has.
const unknownDeviceHash = "0000000000000000000000000000000000000000000000000000000000000000"

// every runs fn every d until the hub closes.
func (h *Hub) every(d time.Duration, fn func()) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		tick := time.NewTicker(d)
		defer tick.Stop()
		for {
			select {
			case <-h.done:
				return
			case <-tick.C:
				fn()
			}
		}
	}()
}

// reapIdle stops the instances that have held nothing for the idle
// timeout, and has the others check their connected sessions (see
// reconcile).
func (h *Hub) reapIdle() {
	h.reg.reapIdle()
	for _, inst := range h.reg.all() {
		if inst.persist != nil {
			inst.persist.sweep(h.now().Add(-time.Minute))
		}
	}
}

// Handshakes is the number of connections not yet past their CONNECT.
func (h *Hub) Handshakes() int { return h.hs.count() }

// Instances is the number of running tenant brokers.
func (h *Hub) Instances() int { return h.reg.count() }

type discard struct{}

func (discard) Emit(events.Event) {}

// qualifies checks an admitted connection against the directory as it is
// now (see directoryCache.qualifies), returning the refusal if it no longer
// qualifies; a directory that does not answer refuses it as unavailable.
func (h *Hub) qualifies(id identity, clientID string) *refusal {
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.ConnectTimeout)
	defer cancel()
	ref, err := h.dir.qualifies(ctx, id, clientID)
	if err != nil {
		return &serverUnavailable
	}
	return ref
}
