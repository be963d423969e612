package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/transport"
)

// Cluster places tenants on the data-plane nodes of a fleet: a running
// tenant has one home node, which runs its broker, and every other node
// forwards the tenant's device connections there, so that a tenant's
// devices always meet in one broker and its sessions are in one place.
// Without one (a single process), every tenant runs here.
type Cluster interface {
	// Place says where the tenant's broker runs: "" here — the node then
	// holds the tenant until Release —, or the forwarding address of its
	// home. chosen says another node or the control plane already chose
	// this one: it takes the tenant if no live node holds it. While the
	// tenant's home drains, Place returns ErrMoving.
	Place(ctx context.Context, tenant string, chosen bool) (addr string, err error)
	// Holds reports whether this node holds the tenant, without I/O.
	Holds(tenant string) bool
	// Release gives the tenant up once its broker stopped here.
	Release(tenant string)
	// ID is this node's id, sent with the connections it forwards.
	ID() string
	// Key signs the headers of forwarded connections.
	Key() []byte
	// Leaving asks the nodes this one forwarded connections to to end
	// them as for a server shutdown (DISCONNECT 0x8B, no Will).
	Leaving(ctx context.Context)
	// Serving reports whether the node may serve its tenants now: false
	// once its lease may have lapsed, until it renewed it and knows which
	// tenants it still holds. Meanwhile nothing is admitted or
	// acknowledged.
	Serving() bool

	// A tenant may be wide: served by several nodes at once, its home
	// among them, through the Fabric (see wide.go). Place then returns ""
	// on each of them, and elsewhere the address of one of them.

	// Wide reports whether the tenant is wide, as last read (no I/O).
	Wide(tenant string) bool
	// Width is how many nodes serve the tenant, as last read (no I/O).
	Width(tenant string) int
	// Widen has a tenant this node holds served by width nodes from now
	// on (1: by this node alone).
	Widen(ctx context.Context, tenant string, width int) error
	// Spread tells the fleet that this node still serves these wide
	// tenants, and returns those it should stop serving: no longer wide,
	// or served by other nodes now.
	Spread(ctx context.Context, tenants []string) (stop []string, err error)
}

// ErrMoving is Place's error while a tenant's home is draining: its broker
// is stopping and storing its sessions, and starts elsewhere once done.
var ErrMoving = errors.New("the tenant is moving to another node")

// leaveWait bounds how long a closing hub waits for the homes of the
// connections it forwarded to end them.
const leaveWait = 5 * time.Second

// forwarder sends the device connections of tenants that live on other
// nodes of a fleet to their home node, and keeps track of them.
type forwarder struct {
	cluster Cluster
	// spreadAll: every tenant is served by every node (Config.SpreadAll).
	spreadAll bool
	// anywhere: persistent sessions too (see anywhere.go).
	anywhere bool
	// running reports whether the tenant's broker runs here; runningWide
	// whether it runs here as one of the tenant's several nodes.
	running, runningWide func(tenant string) bool
	connectTimeout       time.Duration
	writeTimeout         time.Duration // each write to a device (Config.WriteTimeout)
	dir                  *directoryCache
	log                  *slog.Logger
	// done is closed as the hub closes: no more waiting for a move.
	done <-chan struct{}

	mu sync.Mutex
	// forwards are the connections forwarded to other nodes; gone is
	// closed when the last one ends while the hub closes.
	forwards map[net.Conn]struct{}
	gone     chan struct{}
	closed   bool
	total    atomic.Int64 // connections forwarded since the start
}

func newForwarder(cfg Config, dir *directoryCache, done <-chan struct{}) *forwarder {
	return &forwarder{cluster: cfg.Cluster, spreadAll: cfg.Fabric != nil && cfg.SpreadAll, dir: dir, connectTimeout: cfg.ConnectTimeout, writeTimeout: cfg.WriteTimeout,
		log: cfg.Log, done: done, forwards: map[net.Conn]struct{}{}}
}

// route sends a connection whose tenant lives on another node there, and
// reports whether it took care of the connection (forwarded or refused);
// false leaves it to admit. Its tenant must exist before anything is
// claimed or forwarded: a made-up name must cost nothing.
func (f *forwarder) route(conn net.Conn, r *bufio.Reader, raw []byte, pk packets.Packet, tenant string, endHandshake func()) bool {
	ctx, cancel := context.WithTimeout(context.Background(), f.connectTimeout)
	defer cancel()
	if _, found, err := f.dir.tenant(ctx, tenant); err != nil || !found {
		return false // admit refuses it, as it would anywhere
	}
	if f.spreadAll && (!wantsSession(pk) || f.anywhere) {
		// A spread tenant's clean session is served where it connects,
		// and so is a persistent one where sessions live anywhere.
		// Its broker starting here first makes sure the tenant has a
		// home (this node, if none lives): a broker started as one of
		// the tenant's nodes would have to restart to become its home.
		if !f.running(tenant) {
			if _, err := f.place(ctx, tenant, true); err != nil {
				f.log.Warn("a spread tenant without a home: its persistent sessions wait for one", "tenant", tenant, "err", err)
			}
		}
		return f.admitHere(conn, pk, tenant)
	}
	if f.runningWide(tenant) && (!wantsSession(pk) || f.anywhere) {
		// A wide tenant's broker runs here: no need to ask. If this node
		// no longer is one of its nodes, Hub.checkSpread stops it soon.
		return f.admitHere(conn, pk, tenant)
	}
	origin := transport.ForwardOrigin(conn)
	addr, err := f.place(ctx, tenant, origin != "")
	log := f.log.With("tenant", tenant, "remote", conn.RemoteAddr().String())
	switch {
	case err != nil:
		log.Warn("connect refused: the tenant has no home node now", "err", err)
	case addr == "" && f.cluster.Serving():
		return false
	case addr == "":
		log.Warn("connect refused: this node's lease may have lapsed")
	case origin != "":
		// Nodes disagree for a moment about the tenant's home; a second
		// hop could loop.
		log.Warn("connect refused: forwarded here, but the tenant lives on another node", "origin", origin, "home", addr)
	default:
		up, err := f.dialHome(conn, raw, addr)
		if err == nil {
			f.splice(conn, r, up, endHandshake)
			return true
		}
		log.Warn("connect refused: the tenant's home node does not take the connection", "home", addr, "err", err)
	}
	writeConnack(conn, pk.ProtocolVersion, serverUnavailable)
	conn.Close()
	return true
}

// admitHere leaves a connection to admit while the node serves, and
// refuses it otherwise.
func (f *forwarder) admitHere(conn net.Conn, pk packets.Packet, tenant string) bool {
	if f.cluster.Serving() {
		return false
	}
	f.log.Warn("connect refused: this node's lease may have lapsed", "tenant", tenant)
	writeConnack(conn, pk.ProtocolVersion, serverUnavailable)
	conn.Close()
	return true
}

// place asks the cluster where a tenant runs, waiting while it moves.
func (f *forwarder) place(ctx context.Context, tenant string, chosen bool) (string, error) {
	for {
		addr, err := f.cluster.Place(ctx, tenant, chosen)
		if !errors.Is(err, ErrMoving) {
			return addr, err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %w", err, ctx.Err())
		case <-f.done:
			return "", err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// placeHere is the check of an API publish or watch on a node of a fleet:
// the control plane sends them to the tenant's home.
func (f *forwarder) placeHere(ctx context.Context, tenant string) error {
	if f == nil {
		return nil // not in a fleet: every tenant runs here
	}
	addr, err := f.place(ctx, tenant, true)
	switch {
	case err != nil:
		return fmt.Errorf("place tenant %s: %w: %w", tenant, err, tenants.ErrUnavailable)
	case addr != "":
		return fmt.Errorf("tenant %s lives on another node (%s): %w", tenant, addr, tenants.ErrUnavailable)
	}
	return nil
}

// dialHome opens a forwarded connection to the tenant's home node and
// sends it the signed header describing the device, then the CONNECT.
func (f *forwarder) dialHome(conn net.Conn, raw []byte, addr string) (net.Conn, error) {
	var head bytes.Buffer
	if err := transport.WriteForwardHeader(&head, transport.DescribeForward(conn, f.cluster.ID()), f.cluster.Key(), time.Now()); err != nil {
		return nil, err
	}
	head.Write(raw)
	up, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	up.SetWriteDeadline(time.Now().Add(f.connectTimeout))
	if _, err := up.Write(head.Bytes()); err != nil {
		up.Close()
		return nil, err
	}
	up.SetWriteDeadline(time.Time{})
	return up, nil
}

// splice passes bytes both ways between a device and its home node until
// either side ends: what the device sends from what is buffered on, what
// the home sends as it comes. The handshake's deadline is lifted, for
// writes as for reads (the home times a silent device out); each write to
// the device gets writeTimeout, as each of the home's own writes does, so
// that a device that stops reading is dropped here too once its home gave
// up on it, rather than holding the splice's goroutines and sockets.
func (f *forwarder) splice(conn net.Conn, r *bufio.Reader, up net.Conn, endHandshake func()) {
	conn.SetDeadline(time.Time{})
	if !f.addForward(conn) {
		up.Close()
		conn.Close()
		return
	}
	endHandshake()
	defer f.dropForward(conn)
	var homeEnded atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(&deadlineWriter{conn: conn, timeout: f.writeTimeout}, up)
		// The home ended the connection (or the device stopped reading),
		// maybe right after a DISCONNECT the device has not read yet
		// while it goes on writing: its write side is ended, and what it
		// still sends is read for a moment (below), rather than answered
		// with a reset that could destroy the DISCONNECT (see linger.go).
		homeEnded.Store(true)
		closeWrite(conn)
		conn.SetReadDeadline(time.Now().Add(lingerTime))
	}()
	io.Copy(up, r)
	up.Close()
	if homeEnded.Load() {
		io.CopyN(io.Discard, r, lingerBytes)
	}
	conn.Close()
	<-done
}

// deadlineWriter writes to a connection, each write within timeout. As
// deviceConn.send does, it moves the deadline on only once a quarter of
// the timeout has passed: a busy splice does not reset its timer for
// every write, and each write still has three quarters of the timeout.
type deadlineWriter struct {
	conn     net.Conn
	timeout  time.Duration
	deadline time.Time // the deadline last set
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	if d := time.Now().Add(w.timeout); d.Sub(w.deadline) > w.timeout/4 {
		w.deadline = d
		w.conn.SetWriteDeadline(d)
	}
	return w.conn.Write(p)
}

// addForward tracks a forwarded connection, so that Close can end it;
// false once the hub is closing.
func (f *forwarder) addForward(conn net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.forwards[conn] = struct{}{}
	f.total.Add(1)
	return true
}

func (f *forwarder) dropForward(conn net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.forwards, conn)
	if len(f.forwards) == 0 && f.gone != nil {
		close(f.gone)
		f.gone = nil
	}
}

// close ends the connections this node forwarded, as it closes: their
// homes disconnect them as for a server shutdown (0x8B, no Will), and what
// is left after leaveWait is closed. Nothing is forwarded afterwards.
func (f *forwarder) close() {
	f.mu.Lock()
	f.closed = true
	if len(f.forwards) == 0 {
		f.mu.Unlock()
		return
	}
	gone := make(chan struct{})
	f.gone = gone
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), leaveWait)
	defer cancel()
	f.cluster.Leaving(ctx)
	select {
	case <-gone:
	case <-ctx.Done():
	}
	f.mu.Lock()
	for c := range f.forwards {
		c.Close()
	}
	f.mu.Unlock()
}

// count is the number of device connections this node is forwarding to
// other nodes.
func (f *forwarder) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.forwards)
}

// wantsSession reports whether a CONNECT asks for a session that outlives
// the connection (before max_session_expiry cuts it).
func wantsSession(pk packets.Packet) bool {
	if pk.ProtocolVersion == 5 {
		return pk.Properties.SessionExpiryInterval > 0
	}
	return !pk.Connect.Clean
}
