package broker

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/transport"
)

// ingress takes a device connection from accept to its tenant's broker: it
// counts it in the handshake bounds, does its TLS handshake, reads its
// CONNECT, authenticates it, and hands it to the tenant's broker here (see
// registry) or, in a fleet, to the tenant's home node (see forwarder).
type ingress struct {
	cfg  Config
	log  *slog.Logger
	now  func() time.Time
	dir  *directoryCache
	hs   *handshakes
	auth *authLimit // slows down failed authentications
	reg  *registry
	fwd  *forwarder // nil outside a fleet
	// emit raises an event, meterOf is a tenant's meter, quotaHit counts
	// a quota hit: the hub's.
	emit     func(events.Event)
	meterOf  func(tenant string) *meter
	quotaHit func(tenant, device, clientID, quota string, limit int64)

	// done is closed as the hub closes; wg counts the accept loops and
	// the connections being handled (also while they linger).
	done <-chan struct{}
	wg   sync.WaitGroup
	// lingering holds a token for each connection in its lingering close
	// (see linger.go), at most maxLingering.
	lingering chan struct{}

	// open counts the device connections from accept to close (see
	// nodelimit.go); past cfg.MaxNodeConnections (if positive) a new one
	// is refused.
	open atomic.Int64

	mu        sync.Mutex
	listeners []net.Listener
	closed    bool
}

// close stops accepting and ends the connections in handshake; the
// connections handed to tenant brokers end with them (see wait).
func (in *ingress) close() {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return
	}
	in.closed = true
	for _, ln := range in.listeners {
		ln.Close()
	}
	in.mu.Unlock()
	in.hs.close()
}

// wait returns once every accept loop and connection has ended.
func (in *ingress) wait() { in.wg.Wait() }

// serve accepts MQTT connections on ln until the ingress closes, then
// returns nil.
func (in *ingress) serve(ln net.Listener) error {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		ln.Close()
		return nil
	}
	in.listeners = append(in.listeners, ln)
	in.wg.Add(1)
	in.mu.Unlock()
	defer in.wg.Done()

	// An error to wait out (out of descriptors) is logged as it starts
	// and as it ends, with how many accepts failed: not once per failure.
	var backoff time.Duration
	failed, since := 0, time.Time{}
	for {
		conn, err := ln.Accept()
		if err != nil {
			select {
			case <-in.done:
				return nil
			default:
			}
			if !transport.AcceptRetryable(err) {
				return fmt.Errorf("accept: %w", err)
			}
			if failed == 0 {
				since = time.Now()
				in.log.Warn("accept failing; waiting it out (out of descriptors? see MaxNodeConnections)", "addr", ln.Addr().String(), "err", err)
			}
			failed++
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		if failed > 0 {
			in.log.Warn("accept works again", "addr", ln.Addr().String(), "failed", failed, "for", time.Since(since).Round(time.Millisecond).String())
			failed = 0
		}
		backoff = 0
		if in.full() {
			in.hs.refuseNodeFull(physical(conn).RemoteAddr())
			refuse(conn)
			continue
		}
		p := in.ticket(conn)
		if p == nil {
			refuse(conn)
			continue
		}
		in.open.Add(1)
		in.wg.Add(1)
		go in.handle(conn, p)
	}
}

// full reports whether the node holds as many device connections as it
// may (see nodelimit.go).
func (in *ingress) full() bool {
	return in.cfg.MaxNodeConnections > 0 && in.open.Load() >= int64(in.cfg.MaxNodeConnections)
}

// ticket counts a connection as in handshake, or returns nil if it is
// refused (over a bound, or over its address's attempt rate): the count a
// gate below it started, or a new one. Nothing of the connection is read
// yet, but a PROXY or forwarding header, which is not read here either.
func (in *ingress) ticket(conn net.Conn) *pending {
	if g := gatedBelow(conn); g != nil {
		return g.p
	}
	phys := physical(conn)
	p, ok := in.hs.enterFrom(phys, phys.RemoteAddr(), transport.HeaderPending(conn), transport.Forwarding(conn))
	if !ok {
		return nil
	}
	return p
}

// serveConn serves one device connection that arrived some other way than
// a listener (MQTT over WebSocket), and returns when it ends.
func (in *ingress) serveConn(conn net.Conn) {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		conn.Close()
		return
	}
	in.wg.Add(1)
	in.mu.Unlock()
	p := in.ticket(conn)
	if p == nil {
		in.wg.Done()
		conn.Close()
		return
	}
	in.open.Add(1) // its gate checked the node's bound
	in.handle(conn, p)
}

// handle takes a connection from accept to its tenant's broker; p counts
// it as in handshake until then. A panic while admitting it closes that
// connection alone.
//
// The handshake runs in a function of its own (handshake), whose frame —
// nearly 4 KiB: the decoded CONNECT is 800 bytes, and admit takes it by
// value — is gone before the connection is served. Under mochi's read
// loop, whose frames are some 14 KiB deep (its hooks take 800-byte
// packets by value), that is what the goroutine's stack would need to
// grow from 16 KiB to 32 KiB for, on every connection: a copy of the
// whole stack, each frame walked.
func (in *ingress) handle(conn net.Conn, p *pending) {
	defer in.wg.Done()
	defer in.open.Add(-1)
	defer func() {
		if v := recover(); v != nil {
			in.log.Error("panic admitting connection", "remote", conn.RemoteAddr().String(), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			conn.Close()
		}
	}()
	dc, inst := in.handshake(conn, p)
	if dc == nil {
		return
	}
	func() {
		defer in.reg.releaseConn(inst)
		inst.serve(dc)
	}()
	// The connection no longer counts against the tenant's connections
	// while it lingers: the device may connect again at once.
	in.closeServed(dc)
}

// handshake takes a connection through its handshake: the TLS handshake,
// the CONNECT, its authentication. It returns the connection for its
// tenant's broker to serve, with the broker, counted in the tenant's
// connections (see registry.acquireConn); or nil when the connection was
// refused (and closed), or forwarded to the tenant's home node and served
// there until it ended. Either way p no longer counts it as in handshake.
//
//go:noinline
func (in *ingress) handshake(conn net.Conn, p *pending) (*deviceConn, *instance) {
	// A second leave does nothing: the connection admitted leaves before
	// it returns. The function the forwarder is given to leave with is
	// made only in a fleet, so that a connection admitted here allocates
	// no closure for it.
	defer in.hs.leave(p)

	// One deadline, reads and writes, covers what comes before the
	// CONNECT: a PROXY or forwarding header, the TLS handshake (a TLS
	// listener's connection does it on its first read; it is done here
	// to learn its endpoint), the CONNECT. A throttled failure is answered
	// by then too.
	conn.SetDeadline(in.now().Add(in.cfg.ConnectTimeout))
	answerBy := time.Now().Add(in.cfg.ConnectTimeout)
	if !in.hs.rekey(p, conn.RemoteAddr()) {
		conn.Close()
		return nil, nil
	}
	if tc, ok := conn.(*tls.Conn); ok {
		if err := tc.HandshakeContext(p.ctx); err != nil {
			in.log.Debug("TLS handshake failed", "remote", conn.RemoteAddr().String(), "err", err)
			conn.Close()
			return nil, nil
		}
	}
	ep := transport.TenantFromServerName(transport.ServerName(conn), in.cfg.Domain)
	if ep != "" && !in.hs.enterEndpoint(p, ep) {
		conn.Close()
		return nil, nil
	}
	r := newConnectReader(conn)
	raw, pk, err := readConnect(r, in.cfg.MaxConnectSize)
	if err != nil {
		in.noConnect(conn, pk.ProtocolVersion, err)
		return nil, nil
	}

	if in.fwd != nil {
		if tenant, _, _, ok := in.deviceOf(ep, string(pk.Connect.Username)); ok && in.fwd.route(conn, r, raw, pk, tenant, func() { in.hs.leave(p) }) {
			return nil, nil
		}
	}
	// p.ctx ends if the connection is shed; each directory read admit
	// waits for is bounded by the CONNECT timeout (see lookup), and one
	// answered from the cache sets no timer. p.source is the key of
	// conn's address, as rekey left it above (only this goroutine moves
	// it), so admit need not format the address again.
	inst, id, err := in.admit(p.ctx, conn, ep, p.source, raw, pk, answerBy)
	if err != nil {
		var ref refusal
		if !errors.As(err, &ref) {
			in.log.Error("admit connection", "remote", conn.RemoteAddr().String(), "err", err)
			ref = serverUnavailable
		}
		conn.SetWriteDeadline(time.Now().Add(in.cfg.WriteTimeout))
		writeConnack(conn, pk.ProtocolVersion, ref)
		conn.Close()
		return nil, nil
	}
	conn.SetDeadline(time.Time{})
	in.hs.admitted(p) // its attempt gives back the tokens it took
	in.hs.leave(p)
	return newDeviceConn(conn, r, raw, id, inst, in.cfg.WriteTimeout), inst
}

// noConnect answers and closes a connection whose CONNECT readConnect
// failed with err: a CONNECT that was framed but did not decode gets a
// CONNACK with its reason (in protocol version v), anything else none. It
// is a function of its own so that the error's code, which errors.As
// takes the address of, is allocated only for a failure.
func (in *ingress) noConnect(conn net.Conn, v byte, err error) {
	var code packets.Code
	if errors.As(err, &code) {
		ref := refusalFor(code)
		in.log.Debug("malformed CONNECT", "remote", conn.RemoteAddr().String(), "reason", ref.String())
		writeConnack(conn, v, ref)
		conn.Close()
		return
	}
	// Debug: a flood of silent sockets must not flood the log (the
	// handshake bounds log a summary).
	in.log.Debug("no CONNECT", "remote", conn.RemoteAddr().String(), "err", err)
	conn.Close()
}

// admit authenticates a CONNECT and finds its tenant's broker, or returns
// the refusal to send.
//
// Every credential is evaluated, whatever failed before it: a valid one is
// never refused for others' failures. A failure past its streak's free
// ones (see authLimit) is answered 0x9F, late — by answerBy at the latest,
// when a silent connection would have been closed — and raises no event.
//
// endpoint is the tenant endpoint the connection reached ("" for none),
// source the key of its address (see sourceOf): the caller has both.
func (in *ingress) admit(ctx context.Context, conn net.Conn, endpoint, source string, raw []byte, pk packets.Packet, answerBy time.Time) (*instance, identity, error) {
	// The remote address and the logger are made only on the paths that
	// use them: an admitted connection logs nothing here, and formatting
	// an address costs an allocation or two.
	tenant, device, username, ok := in.deviceOf(endpoint, string(pk.Connect.Username))
	if !ok {
		log := in.log.With("remote", conn.RemoteAddr().String(), "endpoint", transport.ServerName(conn))
		return nil, identity{}, in.authFailed(ctx, log, string(pk.Connect.Username), source, answerBy,
			"connect refused: malformed username, or one naming another tenant than the endpoint")
	}
	logger := func() *slog.Logger {
		return in.log.With("tenant", tenant, "device", device, "remote", conn.RemoteAddr().String())
	}
	t, d, cred, ok, err := in.credentials(ctx, conn, tenant, device, pk.Connect.Password)
	if err != nil {
		return nil, identity{}, err
	}
	// Events go only to tenants that exist: a made-up tenant name must not
	// create anything.
	refuse := func(r refusal) (*instance, identity, error) {
		if t.Slug != "" {
			in.emit(events.Event{Tenant: tenant, Type: events.AuthFailed, Device: device, Remote: conn.RemoteAddr().String(), Reason: r.reason})
			in.meterOf(tenant).authFailures.Add(1)
		}
		return nil, identity{}, r
	}
	if !ok {
		log := logger()
		if cred.why != "" {
			log = log.With("detail", cred.why)
		}
		err := in.authFailed(ctx, log, username, source, answerBy, "connect refused: bad credentials")
		if errors.Is(err, authThrottled) {
			if t.Slug != "" {
				in.meterOf(tenant).authFailures.Add(1)
			}
			return nil, identity{}, err
		}
		return refuse(badCredentials)
	}
	in.auth.succeeded(username, source)
	if t.Suspended {
		logger().Info("connect refused: tenant suspended")
		return refuse(tenantSuspended)
	}

	id := identity{tenant: tenant, device: device, secret: d.SecretHash, version: pk.ProtocolVersion, key: cred.key, expires: cred.expires, leaf: cred.leaf, ca: cred.ca}
	cid := pk.Connect.ClientIdentifier
	switch {
	case len(cid) > tenants.MaxClientIDBytes:
		logger().Info("connect refused: client id too long", "bytes", len(cid), "limit", tenants.MaxClientIDBytes)
		return refuse(clientIDRefused)
	case cid == "" && pk.ProtocolVersion < 5 && !pk.Connect.Clean:
		// 3.1.1 §3.1.3-8: a persistent session needs an id of its own.
		logger().Info("connect refused: empty client id with a persistent session")
		return refuse(clientIDRefused)
	case d.ClientIDs == tenants.ClientIDsExact && cid == "":
		id.clientID, id.assign = device, true
	case d.ClientIDs == tenants.ClientIDsExact && cid != device:
		logger().Info("connect refused: client id not bound to the device", "client_id", cid)
		return refuse(clientIDRefused)
	case d.ClientIDs == tenants.ClientIDsExact:
		id.clientID = device
	}
	if limit := t.Quotas().MaxPacketSize; int64(len(raw)) > limit {
		logger().Info("connect refused: CONNECT larger than max_packet_size", "size", len(raw), "limit", limit)
		in.quotaHit(tenant, device, cid, "max_packet_size", limit)
		return nil, identity{}, packetTooLarge
	}

	inst, err := in.reg.acquireConn(t)
	if err != nil {
		var ref refusal
		if errors.As(err, &ref) && (ref == quotaConnections || ref == connectRateExceeded) {
			quota, limit := "max_connections", t.Quotas().MaxConnections
			if ref == connectRateExceeded {
				quota, limit = "connect_rate", t.Quotas().ConnectRate
			}
			in.quotaHit(tenant, device, cid, quota, limit)
		}
		return nil, identity{}, err
	}
	if want := cmp.Or(id.clientID, cid); inst.newSessionOver(want) {
		in.reg.releaseConn(inst)
		limit := t.Quotas().MaxSessions
		logger().Info("connect refused: the tenant keeps max_sessions sessions on this node", "client_id", want, "limit", limit)
		in.quotaHit(tenant, device, want, "max_sessions", limit)
		return nil, identity{}, quotaSessions
	}
	if pk.Connect.WillFlag {
		if tenants.ValidateTopic(pk.Connect.WillTopic) != nil || !inst.mayPublish(device, pk.Connect.WillTopic) {
			in.reg.releaseConn(inst)
			logger().Info("connect refused: will topic not allowed", "topic", cutTopic(pk.Connect.WillTopic))
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
func (in *ingress) authFailed(ctx context.Context, log *slog.Logger, username, source string, answerBy time.Time, msg string) error {
	delay, first := in.auth.fail(username, source)
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
		case <-in.done:
		}
		t.Stop()
	}
	return authThrottled
}

// deviceOf is the tenant and device a CONNECT's username names, with the
// full username: "<tenant>/<device>", or the device's name alone on the
// tenant's own endpoint (SNI <tenant>.<Domain>; endpoint is that tenant,
// "" for none), where a username naming another tenant is refused.
func (in *ingress) deviceOf(endpoint, username string) (tenant, device, full string, ok bool) {
	tenant, device, ok = splitUsername(username)
	if endpoint != "" {
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
func (in *ingress) credentials(ctx context.Context, conn net.Conn, tenant, device string, password []byte) (t tenants.Tenant, d tenants.Device, cred credential, ok bool, err error) {
	t, found, err := in.dir.tenant(ctx, tenant)
	if err != nil || !found {
		return t, d, cred, false, err
	}
	d, found, err = in.dir.device(ctx, tenant, device)
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
		keys, err := in.dir.deviceKeys(ctx, tenant, device)
		if err != nil {
			return t, d, cred, false, err
		}
		k, exp, verr := tenants.VerifyDeviceToken(string(password), tenant, keys, in.now())
		match, cred = verr == nil, credential{key: k.Fingerprint, expires: exp, why: errText(verr)}
	}
	if chain := transport.PeerCertificates(conn); !match && found && d.Enabled && len(chain) > 0 {
		cas, err := in.dir.authorities(ctx, tenant)
		if err != nil {
			return t, d, cred, false, err
		}
		pinned, err := in.dir.certificates(ctx, tenant, device)
		if err != nil {
			return t, d, cred, false, err
		}
		c, verr := tenants.VerifyDeviceCertificate(chain, tenant, device, cas, pinned, in.now())
		match, cred = verr == nil, credential{leaf: c.Leaf, ca: c.CA, why: errText(verr)}
	}
	if chain := transport.PeerCertificates(conn); !found && len(chain) > 0 && t.Slug != "" && !t.Suspended {
		d, found, cred, err = in.provision(ctx, conn, t, device, chain)
		if err != nil || !found {
			return t, d, cred, false, err
		}
		match = true
	}
	return t, d, cred, found && d.Enabled && match, nil
}

// provision registers a device the tenant does not know on its first
// connection, if its certificate chains to one of the tenant's CAs marked
// for provisioning and names it (by CN, or by URI SAN). Only the tenant's
// own CAs are consulted: another tenant's CA never provisions here. A
// certificate that does not qualify is refused as an unknown device is;
// max_devices refuses with quota exceeded (a quota_exceeded event).
func (in *ingress) provision(ctx context.Context, conn net.Conn, t tenants.Tenant, device string, chain []*x509.Certificate) (tenants.Device, bool, credential, error) {
	cas, err := in.dir.authorities(ctx, t.Slug)
	if err != nil {
		return tenants.Device{}, false, credential{}, err
	}
	marked := slices.DeleteFunc(slices.Clone(cas), func(ca tenants.CA) bool { return ca.Provisioning == nil })
	if len(marked) == 0 {
		return tenants.Device{}, false, credential{}, nil
	}
	c, verr := tenants.VerifyDeviceCertificate(chain, t.Slug, device, marked, nil, in.now())
	if verr != nil {
		return tenants.Device{}, false, credential{why: "not provisioned: " + verr.Error()}, nil
	}
	d, created, err := in.dir.dir.ProvisionDevice(ctx, t.Slug, device, c.CA)
	var qe *tenants.QuotaError
	switch {
	case errors.As(err, &qe):
		in.quotaHit(t.Slug, device, "", qe.Quota, qe.Limit)
		return tenants.Device{}, false, credential{}, quotaDevices
	case errors.Is(err, tenants.ErrNotProvisioning), errors.Is(err, tenants.ErrInvalid):
		// The CA was unmarked or removed since it was read.
		return tenants.Device{}, false, credential{why: "not provisioned: " + err.Error()}, nil
	case err != nil:
		return tenants.Device{}, false, credential{}, err
	}
	if created {
		in.log.Info("device provisioned from its certificate", "tenant", t.Slug, "device", device, "ca", c.CA)
		in.emit(events.Event{Tenant: t.Slug, Type: events.DeviceProvisioned, Device: device, Remote: conn.RemoteAddr().String(), Reason: c.CA})
	}
	return d, true, credential{leaf: c.Leaf, ca: c.CA}, nil
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
