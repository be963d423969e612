package broker_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/cluster"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/transport"
)

const fleetToken = "rop_fleet-test-token-0123456789"

// fleetNode is one data-plane node of a fleet on a shared directory: a hub
// with its device listener, its forwarding listener, its internal API and
// its Member.
type fleetNode struct {
	id     string
	hub    *broker.Hub
	member *cluster.Member
	addr   string // where devices connect
	fwd    string // where other nodes forward
	logs   *testenv.Buffer
}

// newFleetNode starts a node on s's directory; mod adjusts its hub.
func newFleetNode(t testing.TB, s *stack, id string, mod ...func(*broker.Config)) *fleetNode {
	t.Helper()
	n := &fleetNode{id: id, logs: &testenv.Buffer{}}
	log := slog.New(slog.NewTextHandler(n.logs, nil)).With("node", id)
	var api http.Handler = http.NotFoundHandler()
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { api.ServeHTTP(w, r) }))
	t.Cleanup(internal.Close)
	fwdLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.fwd = fwdLn.Addr().String()
	n.member = cluster.NewMember(cluster.MemberConfig{Store: s.store, ID: id, URL: internal.URL, ForwardAddr: n.fwd, Token: fleetToken, Log: log})
	if err := n.member.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	cfg := broker.Config{Directory: s.store, Changes: s.store.Changes(), Usage: s.store, Log: log, Cluster: n.member}
	for _, m := range mod {
		m(&cfg)
	}
	if n.hub, err = broker.New(cfg); err != nil {
		t.Fatal(err)
	}
	n.member.OnLost(n.hub.Evict)
	api = cluster.Serve(n.hub, events.NewMemory(10), fleetToken, log)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.addr = ln.Addr().String()
	go n.hub.Serve(ln)
	go n.hub.Serve(transport.ForwardListener(fwdLn, n.member.Key(), time.Second))
	t.Cleanup(func() { n.stop(t) })
	return n
}

// stop drains the node as `roost dataplane` does.
func (n *fleetNode) stop(t testing.TB) {
	n.member.Drain(context.Background())
	n.hub.Close()
	n.member.Retire(context.Background())
}

// homeOf is the node running the tenant's broker, failing unless exactly
// one does.
func homeOf(t testing.TB, tenant string, nodes ...*fleetNode) (home, other *fleetNode) {
	t.Helper()
	for _, n := range nodes {
		if n.member.Holds(tenant) {
			if home != nil {
				t.Fatalf("%s runs on %s and %s", tenant, home.id, n.id)
			}
			home = n
		} else {
			other = n
		}
	}
	if home == nil {
		t.Fatalf("%s runs nowhere", tenant)
	}
	return home, other
}

// TestFleetForwarding: two nodes, one tenant: its devices connect to
// either node and meet in one broker, on its home; a connection counts
// once, on the home, with the device's own address; another tenant's
// devices see nothing of it; a made-up tenant claims nothing; the
// forwarding port refuses connections that do not carry the nodes'
// signature; and when the forwarding node drains, its forwarded clients
// are told 0x8B by their home, without their Wills, while the others stay.
func TestFleetForwarding(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.tenant("other")
	secrets := map[string]string{}
	for _, d := range []string{"d1", "d2", "d3"} {
		secrets[d] = s.device("acme", d)
	}
	spy := s.device("other", "spy")
	a, b := newFleetNode(t, s, "a"), newFleetNode(t, s, "b")

	// d1 connects to the node acme will live on.
	first, _ := cluster.Pick("acme", []tenants.Node{{ID: a.id, ForwardAddr: a.fwd}, {ID: b.id, ForwardAddr: b.fwd}})
	home, other := a, b
	if first.ID == b.id {
		home, other = b, a
	}
	c1 := mustV5(t, home.addr, user("acme", "d1"), secrets["d1"], "d1")
	if h, _ := homeOf(t, "acme", a, b); h != home {
		t.Fatalf("acme went to %s, not to %s as Pick said", h.id, home.id)
	}
	c1.sub(t, "acme-topic/#", 1)
	// d2 connects to the node that is not acme's home, with a Will.
	c2 := mustV5(t, other.addr, user("acme", "d2"), secrets["d2"], "d2", func(c *paho.Connect) {
		c.WillMessage = &paho.WillMessage{Topic: "acme-topic/will", QoS: 1, Payload: []byte("d2 gone")}
	})
	c2.sub(t, "down/#", 1)
	if other.member.Holds("acme") || other.hub.Instances() != 0 {
		t.Fatalf("the node %s started acme's broker too", other.id)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(other.hub.Collector(0))
	if n, total := metricValue(t, reg, "roost_forwarded_connections"), metricValue(t, reg, "roost_forwards_total"); n != 1 || total != 1 {
		t.Errorf("%s forwards %v connections (%v in all), want 1", other.id, n, total)
	}
	// Both ways, across the nodes.
	c2.pub(t, "acme-topic/x", "from d2", 1, false)
	c1.expect(t, "acme-topic/x", "from d2")
	c1.pub(t, "down/y", "from d1", 1, false)
	c2.expect(t, "down/y", "from d1")
	if n := home.hub.ConnectionCount("acme"); n != 2 {
		t.Errorf("home counts %d connections, want 2", n)
	}
	if n := other.hub.ConnectionCount("acme"); n != 0 {
		t.Errorf("the forwarding node counts %d connections of acme, want 0", n)
	}
	if conns := home.hub.Connections("acme", "d2"); len(conns) != 1 || conns[0].RemoteAddr != c2.conn.LocalAddr().String() {
		t.Errorf("d2's connection on the home: %+v, want the device's address %s", conns, c2.conn.LocalAddr())
	}
	// Another tenant's device, through either node, sees nothing of acme.
	for _, n := range []*fleetNode{a, b} {
		sp := mustV5(t, n.addr, user("other", "spy"), spy, "spy")
		sp.sub(t, "#", 1)
		c2.pub(t, "acme-topic/secret", "x", 1, false)
		c1.expect(t, "acme-topic/secret", "x")
		sp.quiet(t, 200*time.Millisecond, "a device of another tenant, through "+n.id)
		sp.Disconnect(&paho.Disconnect{})
	}
	// A made-up tenant is refused like a wrong password and claims nothing.
	if code := refusedV5(t, other.addr, user("nosuch", "d1"), "x", "d1"); code != 0x86 {
		t.Errorf("a made-up tenant: %#x, want 0x86", code)
	}
	if h, _ := s.store.TenantHome(ctx, "nosuch"); h != "" {
		t.Errorf("a made-up tenant was placed on %s", h)
	}
	// A wrong secret through the forwarding node is refused by the home.
	if code := refusedV5(t, other.addr, user("acme", "d3"), "wrong", "d3"); code != 0x86 {
		t.Errorf("a wrong secret, forwarded: %#x, want 0x86", code)
	}

	// The forwarding port takes only what the nodes signed.
	connect := mqttConnect("acme/d3", secrets["d3"])
	for name, head := range map[string][]byte{
		"no header":      nil,
		"a guessed key":  forwardHeader(t, []byte("a guess")),
		"a PROXY header": []byte("PROXY TCP4 203.0.113.7 10.0.0.1 40000 1883\r\n"),
	} {
		conn, err := net.Dial("tcp", home.fwd)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(append(head, connect...))
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		if got, err := io.ReadAll(conn); len(got) != 0 || err != nil {
			t.Errorf("%s on the forwarding port: answered %x (%v), want the connection closed unanswered", name, got, err)
		}
		conn.Close()
	}
	conn, err := net.Dial("tcp", home.fwd)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(append(forwardHeader(t, cluster.ForwardKey(fleetToken)), connect...))
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if ack := make([]byte, 4); func() bool { _, err := io.ReadFull(conn, ack); return err != nil }() || ack[0] != 0x20 || ack[3] != 0 {
		t.Errorf("a signed header on the forwarding port: CONNACK %x, want accepted", ack)
	}
	conn.Close()

	// The forwarding node drains: d2 is told 0x8B by its home, its Will is
	// withdrawn, d1 (on the home) stays.
	other.stop(t)
	select {
	case d := <-c2.discs:
		if d.ReasonCode != 0x8B {
			t.Errorf("a forwarded client of a draining node: DISCONNECT %#x, want 0x8B", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("a forwarded client of a draining node was not told\n%s\n%s", other.logs, home.logs)
	}
	c1.quiet(t, 300*time.Millisecond, "the Will of a client whose node drained")
	c1.pub(t, "acme-topic/still", "here", 1, false)
	c1.expect(t, "acme-topic/still", "here")
}

// TestFleetClientCertificates: a device that proves itself with a client
// certificate, over TLS to its tenant's own endpoint (SNI), connects
// through a node that is not its tenant's home: the home verifies the
// certificate the forwarding node saw against the tenant's CA; a
// certificate of another CA is refused.
func TestFleetClientCertificates(t *testing.T) {
	const domain = "localhost" // the development certificate covers *.localhost
	s := newStack(t)
	s.tenant("acme")
	s.device("acme", "d1")
	secret := s.device("acme", "anchor")
	withDomain := func(c *broker.Config) { c.Domain = domain }
	a, b := newFleetNode(t, s, "a", withDomain), newFleetNode(t, s, "b", withDomain)
	mustV5(t, a.addr, user("acme", "anchor"), secret, "anchor") // places acme
	home, other := homeOf(t, "acme", a, b)
	acmeCA, stranger := newIssuer(t, "acme CA"), newIssuer(t, "stranger CA")
	if _, err := s.store.CreateCA(ctx, "acme", tenants.CAInput{Certificate: acmeCA.pem()}); err != nil {
		t.Fatal(err)
	}
	tlsAddr, roots := serveTLS(t, other.hub)
	dial := func(cert tls.Certificate) byte {
		t.Helper()
		conn, err := tls.Dial("tcp", tlsAddr, &tls.Config{RootCAs: roots, ServerName: "acme." + domain,
			Certificates: []tls.Certificate{cert}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ca, err := c.Connect(cctx, &paho.Connect{ClientID: "d1", KeepAlive: 30, CleanStart: true, Username: "d1", UsernameFlag: true})
		if ca == nil {
			t.Fatalf("no CONNACK: %v\n%s", err, home.logs)
		}
		if ca.ReasonCode == 0 {
			c.Disconnect(&paho.Disconnect{})
		}
		return ca.ReasonCode
	}
	now := time.Now()
	if code := dial(acmeCA.leaf(t, "d1", "", now.Add(-time.Hour), now.Add(time.Hour))); code != 0 {
		t.Errorf("a certificate of the tenant's CA, forwarded: %#x, want 0\n%s", code, home.logs)
	}
	if code := dial(stranger.leaf(t, "d1", "", now.Add(-time.Hour), now.Add(time.Hour))); code != 0x86 {
		t.Errorf("a certificate of another CA, forwarded: %#x, want 0x86", code)
	}
	if other.member.Holds("acme") {
		t.Error("the forwarding node took the tenant")
	}
	if home.hub.Instances() != 1 || other.hub.Instances() != 0 {
		t.Errorf("brokers running: %d on the home, %d on the other node", home.hub.Instances(), other.hub.Instances())
	}
}

// metricValue is the value of an unlabelled gauge or counter.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			return m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestFleetForwardedPastConnectTimeout: a device forwarded to its
// tenant's home gets what the home sends it after the CONNECT timeout as
// before it: the handshake's deadline does not stay on its connection.
// (The write deadline stayed: the first message, or PINGRESP, the home
// sent it later than ROOST_CONNECT_TIMEOUT after it connected ended its
// connection, for every device of a fleet not connected to its tenant's
// home.)
func TestFleetForwardedPastConnectTimeout(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	d1, d2 := s.device("acme", "d1"), s.device("acme", "d2")
	short := func(c *broker.Config) { c.ConnectTimeout = time.Second }
	a, b := newFleetNode(t, s, "a", short), newFleetNode(t, s, "b", short)
	first, _ := cluster.Pick("acme", []tenants.Node{{ID: a.id, ForwardAddr: a.fwd}, {ID: b.id, ForwardAddr: b.fwd}})
	home, other := a, b
	if first.ID == b.id {
		home, other = b, a
	}
	c1 := mustV5(t, home.addr, user("acme", "d1"), d1, "d1")
	c1.sub(t, "up/#", 1)
	c2 := mustV5(t, other.addr, user("acme", "d2"), d2, "d2")
	c2.sub(t, "down/#", 1)
	time.Sleep(2500 * time.Millisecond) // past the CONNECT timeout, twice
	c1.pub(t, "down/1", "late", 1, false)
	c2.expect(t, "down/1", "late")
	c2.pub(t, "up/1", "still here", 1, false)
	c1.expect(t, "up/1", "still here")
	if n := other.hub.Forwards(); n != 1 {
		t.Errorf("%s forwards %d connections, want 1", other.id, n)
	}
}

// mqttConnect is a v5 CONNECT with a username and password.
func mqttConnect(username, password string) []byte {
	var body bytes.Buffer
	body.Write([]byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0xC2, 0, 30, 0}) // v5, username+password+clean, keepalive 30, no properties
	str := func(s string) { body.Write([]byte{byte(len(s) >> 8), byte(len(s))}); body.WriteString(s) }
	str("d3")
	str(username)
	str(password)
	return append([]byte{0x10, byte(body.Len())}, body.Bytes()...)
}

func forwardHeader(t *testing.T, key []byte) []byte {
	var b bytes.Buffer
	if err := transport.WriteForwardHeader(&b, transport.Forwarded{Origin: "test", Remote: &net.TCPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 40000}}, key, time.Now()); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestFleetIdleRelease: a tenant whose broker stops for being idle is
// released, so that its next device places it afresh (on the node Pick
// gives, which may be another).
func TestFleetIdleRelease(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	secret := s.device("acme", "d1")
	idle := func(c *broker.Config) { c.IdleTimeout = 200 * time.Millisecond }
	a, b := newFleetNode(t, s, "a", idle), newFleetNode(t, s, "b", idle)
	c := mustV5(t, b.addr, user("acme", "d1"), secret, "d1")
	home, _ := homeOf(t, "acme", a, b)
	c.Disconnect(&paho.Disconnect{})
	eventually(t, 5*time.Second, "the idle tenant released", func() bool {
		h, err := s.store.TenantHome(ctx, "acme")
		return err == nil && h == "" && !home.member.Holds("acme") && home.hub.Instances() == 0
	})
	c = mustV5(t, a.addr, user("acme", "d1"), secret, "d1")
	homeOf(t, "acme", a, b)
	c.pub(t, "t", "back", 1, false)
}

// BenchmarkFleetRoundTrip measures what forwarding costs: a QoS 1 publish
// to its subscriber's receipt, with both devices on the tenant's home
// (direct) and with both on another node (forwarded: two extra hops), in
// the same run, alternating, over loopback.
//
//	go test -run '^$' -bench FleetRoundTrip -benchtime 2000x ./broker
func BenchmarkFleetRoundTrip(b *testing.B) {
	s := newStack(b)
	s.tenant("acme")
	lifted := int64(1_000_000)
	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{
		"publish_rate": &lifted, "tenant_publish_rate": &lifted}}); err != nil {
		b.Fatal(err)
	}
	secrets := map[string]string{}
	for _, d := range []string{"p1", "s1", "p2", "s2"} {
		secrets[d] = s.device("acme", d)
	}
	a, c := newFleetNode(b, s, "a"), newFleetNode(b, s, "b")
	first := mustV5(b, a.addr, user("acme", "p1"), secrets["p1"], "p1")
	home, other := homeOf(b, "acme", a, c)
	first.Disconnect(&paho.Disconnect{})
	type pair struct{ pub, sub *v5 }
	pairs := map[string]pair{}
	for name, n := range map[string]*fleetNode{"direct": home, "forwarded": other} {
		p, sb := "p1", "s1"
		if name == "forwarded" {
			p, sb = "p2", "s2"
		}
		pr := pair{mustV5(b, n.addr, user("acme", p), secrets[p], p), mustV5(b, n.addr, user("acme", sb), secrets[sb], sb)}
		pr.sub.sub(b, name, 1)
		pairs[name] = pr
	}
	took := map[string]time.Duration{}
	b.ResetTimer()
	for range b.N {
		for _, name := range []string{"direct", "forwarded"} {
			pr := pairs[name]
			start := time.Now()
			pr.pub.pub(b, name, "x", 1, false)
			select {
			case <-pr.sub.msgs:
			case <-time.After(5 * time.Second):
				b.Fatalf("%s: nothing received", name)
			}
			took[name] += time.Since(start)
		}
	}
	b.StopTimer()
	d, f := took["direct"].Seconds()/float64(b.N), took["forwarded"].Seconds()/float64(b.N)
	b.ReportMetric(d*1e6, "µs-direct")
	b.ReportMetric(f*1e6, "µs-forwarded")
	b.ReportMetric(f/d, "forwarded/direct")
}
