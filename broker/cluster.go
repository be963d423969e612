package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
}

// ErrMoving is Place's error while a tenant's home is draining: its broker
// is stopping and storing its sessions, and starts elsewhere once done.
var ErrMoving = errors.New("the tenant is moving to another node")

// leaveWait bounds how long a closing hub waits for the homes of the
// connections it forwarded to end them.
const leaveWait = 5 * time.Second

// route sends a connection whose tenant lives on another node there, and
// reports whether it took care of the connection (forwarded or refused);
// false leaves it to admit. Its tenant must exist before anything is
// claimed or forwarded: a made-up name must cost nothing.
func (h *Hub) route(conn net.Conn, r *bufio.Reader, raw []byte, pk packets.Packet, endHandshake func()) bool {
	tenant, _, _, ok := h.deviceOf(conn, string(pk.Connect.Username))
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.ConnectTimeout)
	defer cancel()
	if _, found, err := h.dir.tenant(ctx, tenant); err != nil || !found {
		return false // admit refuses it, as it would anywhere
	}
	origin := transport.ForwardOrigin(conn)
	addr, err := h.place(ctx, tenant, origin != "")
	log := h.log.With("tenant", tenant, "remote", conn.RemoteAddr().String())
	switch {
	case err != nil:
		log.Warn("connect refused: the tenant has no home node now", "err", err)
	case addr == "":
		return false
	case origin != "":
		// Nodes disagree for a moment about the tenant's home; a second
		// hop could loop.
		log.Warn("connect refused: forwarded here, but the tenant lives on another node", "origin", origin, "home", addr)
	default:
		up, err := h.dialHome(conn, raw, addr)
		if err == nil {
			h.splice(conn, r, up, endHandshake)
			return true
		}
		log.Warn("connect refused: the tenant's home node does not take the connection", "home", addr, "err", err)
	}
	writeConnack(conn, pk.ProtocolVersion, serverUnavailable)
	conn.Close()
	return true
}

// place asks the cluster where a tenant runs, waiting while it moves.
func (h *Hub) place(ctx context.Context, tenant string, chosen bool) (string, error) {
	for {
		addr, err := h.cfg.Cluster.Place(ctx, tenant, chosen)
		if !errors.Is(err, ErrMoving) {
			return addr, err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %w", err, ctx.Err())
		case <-h.done:
			return "", err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// placeHere is the check of an API publish or watch on a node of a fleet:
// the control plane sends them to the tenant's home.
func (h *Hub) placeHere(ctx context.Context, tenant string) error {
	if h.cfg.Cluster == nil {
		return nil
	}
	addr, err := h.place(ctx, tenant, true)
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
func (h *Hub) dialHome(conn net.Conn, raw []byte, addr string) (net.Conn, error) {
	var head bytes.Buffer
	if err := transport.WriteForwardHeader(&head, transport.DescribeForward(conn, h.cfg.Cluster.ID()), h.cfg.Cluster.Key(), time.Now()); err != nil {
		return nil, err
	}
	head.Write(raw)
	up, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	up.SetWriteDeadline(time.Now().Add(h.cfg.ConnectTimeout))
	if _, err := up.Write(head.Bytes()); err != nil {
		up.Close()
		return nil, err
	}
	up.SetWriteDeadline(time.Time{})
	return up, nil
}

// splice passes bytes both ways between a device and its home node until
// either side ends: what the device sends from what is buffered on, what
// the home sends as it comes (the home bounds its own writes).
func (h *Hub) splice(conn net.Conn, r *bufio.Reader, up net.Conn, endHandshake func()) {
	conn.SetReadDeadline(time.Time{})
	if !h.addForward(conn) {
		up.Close()
		conn.Close()
		return
	}
	endHandshake()
	defer h.dropForward(conn)
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(conn, up)
		conn.Close()
	}()
	io.Copy(up, r)
	up.Close()
	<-done
}

// addForward tracks a forwarded connection, so that Close can end it;
// false once the hub is closing.
func (h *Hub) addForward(conn net.Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.forwards[conn] = struct{}{}
	h.forwarded.Add(1)
	return true
}

func (h *Hub) dropForward(conn net.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.forwards, conn)
	if len(h.forwards) == 0 && h.forwardsGone != nil {
		close(h.forwardsGone)
		h.forwardsGone = nil
	}
}

// endForwards ends the connections this node forwarded, as it closes: their
// homes disconnect them as for a server shutdown (0x8B, no Will), and what
// is left after leaveWait is closed.
func (h *Hub) endForwards() {
	h.mu.Lock()
	if len(h.forwards) == 0 {
		h.mu.Unlock()
		return
	}
	gone := make(chan struct{})
	h.forwardsGone = gone
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), leaveWait)
	defer cancel()
	h.cfg.Cluster.Leaving(ctx)
	select {
	case <-gone:
	case <-ctx.Done():
	}
	h.mu.Lock()
	for c := range h.forwards {
		c.Close()
	}
	h.mu.Unlock()
}

// Forwards is the number of device connections this node is forwarding to
// other nodes.
func (h *Hub) Forwards() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.forwards)
}

// CloseForwarded disconnects the devices another node forwarded here, as
// for a server shutdown: that node is draining. MQTT 5 clients are told
// 0x8B; their Wills are not sent unless the hub sends Wills on shutdown.
func (h *Hub) CloseForwarded(origin string) int {
	insts := h.reg.all()
	n := 0
	for _, inst := range insts {
		fs := inst.live.conns(func(dc *deviceConn) bool { return transport.ForwardOrigin(dc.Conn) == origin })
		for dc, cl := range fs {
			if !h.cfg.WillsOnShutdown {
				dc.withdrawWill.Store(true)
			}
			inst.kick(cl, packets.ErrServerShuttingDown)
		}
		n += len(fs)
	}
	return n
}

// Evict stops a tenant's broker here because another node holds it now
// (this node was taken for dead): its devices reconnect and are forwarded
// to the new home.
func (h *Hub) Evict(tenant string) {
	if inst := h.reg.running(tenant); inst != nil {
		h.reg.stop(inst, "another node holds the tenant now")
	}
}
