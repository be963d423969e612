package broker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// stack is a data plane on a real loopback listener over a real SQLite
// directory.
type stack struct {
	t     testing.TB
	store *tenants.Store
	hub   *broker.Hub
	addr  string
	logs  *testenv.Buffer
	owner tenants.Account
}

var ctx = tenants.WithActor(context.Background(), "test")

func newStack(t testing.TB, mod ...func(*broker.Config)) *stack {
	t.Helper()
	store, err := tenants.Open(context.Background(), "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if _, err := store.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.Buffer{}
	cfg := broker.Config{
		Directory: store,
		Changes:   store.Changes(),
		Usage:     store,
		Log:       slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, m := range mod {
		m(&cfg)
	}
	hub, addr := serveHub(t, cfg)
	owner, err := store.CreateAccount(ctx, tenants.Signup{Email: "owner@example.com", Password: "correct horse battery"})
	if err != nil {
		t.Fatal(err)
	}
	return &stack{t: t, store: store, hub: hub, addr: addr, logs: logs, owner: owner}
}

// serveHub starts a hub on a loopback listener; it closes as the test
// ends, and Serve must have ended without an error.
func serveHub(t testing.TB, cfg broker.Config) (*broker.Hub, string) {
	t.Helper()
	hub, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- hub.Serve(ln) }()
	t.Cleanup(func() {
		hub.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return hub, ln.Addr().String()
}

// tenant creates a tenant. Its connect_rate is lifted: tests open
// connections as fast as the machine allows, and only the quota tests are
// about the rate (they set their own).
func (s *stack) tenant(slug string) {
	s.t.Helper()
	if _, err := s.store.CreateTenant(ctx, s.owner.ID, tenants.TenantInput{Slug: slug}); err != nil {
		s.t.Fatal(err)
	}
	lifted := int64(1_000_000)
	if _, err := s.store.AdminUpdateTenant(ctx, slug, tenants.AdminTenantUpdate{Quotas: map[string]*int64{"connect_rate": &lifted}}); err != nil {
		s.t.Fatal(err)
	}
}

// setQuota overrides one of a tenant's quotas, as the operator does.
func (s *stack) setQuota(tenant, quota string, v int64) {
	s.t.Helper()
	if _, err := s.store.AdminUpdateTenant(ctx, tenant, tenants.AdminTenantUpdate{Quotas: map[string]*int64{quota: &v}}); err != nil {
		s.t.Fatal(err)
	}
}

// denyAction sets a tenant's deny_action, as its admin does.
func (s *stack) denyAction(tenant string, a tenants.DenyAction) {
	s.t.Helper()
	if _, err := s.store.UpdateTenant(ctx, tenant, tenants.TenantUpdate{DenyAction: &a}); err != nil {
		s.t.Fatal(err)
	}
	eventually(s.t, 5*time.Second, "the running broker has the new deny_action", func() bool {
		got, running := broker.DenyActionOf(s.hub, tenant)
		return !running || got == a
	})
}

// device registers a device and returns its secret.
func (s *stack) device(tenant, name string, policy ...tenants.ClientIDPolicy) string {
	s.t.Helper()
	in := tenants.DeviceInput{Name: name}
	if len(policy) > 0 {
		in.ClientIDs = policy[0]
	}
	_, secret, err := s.store.CreateDevice(ctx, tenant, in)
	if err != nil {
		s.t.Fatal(err)
	}
	return secret
}

// rules replaces a tenant's rules with the given ones, in order.
func (s *stack) rules(tenant string, rules ...tenants.ACLRuleInput) {
	s.t.Helper()
	old, err := s.store.ACLRules(ctx, tenant)
	if err != nil {
		s.t.Fatal(err)
	}
	for _, r := range old {
		if err := s.store.DeleteACLRule(ctx, tenant, r.ID); err != nil {
			s.t.Fatal(err)
		}
	}
	for _, r := range rules {
		if _, err := s.store.CreateACLRule(ctx, tenant, r); err != nil {
			s.t.Fatal(err)
		}
	}
}

func allow(action tenants.Action, topic string) tenants.ACLRuleInput {
	return tenants.ACLRuleInput{Effect: tenants.Allow, Action: action, Topic: topic}
}

func deny(action tenants.Action, topic string) tenants.ACLRuleInput {
	return tenants.ACLRuleInput{Effect: tenants.Deny, Action: action, Topic: topic}
}

// v5 is an MQTT 5 client (paho.golang) that collects what it receives.
type v5 struct {
	*paho.Client
	conn    net.Conn
	msgs    chan *paho.Publish
	discs   chan *paho.Disconnect
	closed  chan struct{}
	connack *paho.Connack
}

// dialV5 connects an MQTT 5 client; cp may adjust the CONNECT.
func dialV5(t testing.TB, addr, username, password, clientID string, cp ...func(*paho.Connect)) (*v5, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return connectV5(t, conn, username, password, clientID, cp...)
}

// connectV5 connects an MQTT 5 client over conn.
func connectV5(t testing.TB, conn net.Conn, username, password, clientID string, cp ...func(*paho.Connect)) (*v5, error) {
	t.Helper()
	c := &v5{conn: conn, msgs: make(chan *paho.Publish, 1000), discs: make(chan *paho.Disconnect, 1), closed: make(chan struct{})}
	var closedOnce sync.Once
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.msgs <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { c.discs <- d },
		OnClientError:      func(error) { closedOnce.Do(func() { close(c.closed) }) },
	})
	connect := &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true, Username: username, Password: []byte(password),
		UsernameFlag: username != "", PasswordFlag: password != ""}
	for _, f := range cp {
		f(connect)
	}
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := c.Connect(cctx, connect)
	c.connack = ca
	if err != nil {
		conn.Close()
		return c, err
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c, nil
}

// mustV5 connects and fails the test if the broker refuses.
func mustV5(t testing.TB, addr, username, password, clientID string, cp ...func(*paho.Connect)) *v5 {
	t.Helper()
	c, err := dialV5(t, addr, username, password, clientID, cp...)
	if err != nil {
		t.Fatalf("connect %s: %v", username, err)
	}
	return c
}

// refusedV5 connects and returns the CONNACK reason code of a refusal.
func refusedV5(t testing.TB, addr, username, password, clientID string, cp ...func(*paho.Connect)) byte {
	t.Helper()
	c, err := dialV5(t, addr, username, password, clientID, cp...)
	if err == nil {
		t.Fatalf("connect %q: accepted, want a refusal", username)
	}
	if c.connack == nil {
		t.Fatalf("connect %q: %v, and no CONNACK", username, err)
	}
	return c.connack.ReasonCode
}

func (c *v5) sub(t testing.TB, filter string, qos byte) byte {
	t.Helper()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil && sa == nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return sa.Reasons[0]
}

func (c *v5) pub(t testing.TB, topic, payload string, qos byte, retain bool) *paho.PublishResponse {
	t.Helper()
	pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := c.Publish(pctx, &paho.Publish{Topic: topic, Payload: []byte(payload), QoS: qos, Retain: retain})
	if err != nil && r == nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	return r
}

// expect waits for a message on topic with payload.
func (c *v5) expect(t testing.TB, topic, payload string) *paho.Publish {
	t.Helper()
	select {
	case m := <-c.msgs:
		if m.Topic != topic || string(m.Payload) != payload {
			t.Fatalf("got %s %q, want %s %q", m.Topic, m.Payload, topic, payload)
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatalf("no message on %s within 5s", topic)
	}
	return nil
}

// quiet fails if a message arrives within d.
func (c *v5) quiet(t testing.TB, d time.Duration, what string) {
	t.Helper()
	select {
	case m := <-c.msgs:
		t.Fatalf("%s: got %s %q, want nothing", what, m.Topic, m.Payload)
	case <-time.After(d):
	}
}

// v3 is an MQTT 3.1.1 client (paho.mqtt.golang).
type v3 struct {
	paho3.Client
	msgs chan paho3.Message
	lost chan error
}

func dialV3(t testing.TB, addr, username, password, clientID string, clean bool, opts ...func(*paho3.ClientOptions)) (*v3, byte, error) {
	t.Helper()
	c := &v3{msgs: make(chan paho3.Message, 1000), lost: make(chan error, 1)}
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetUsername(username).SetPassword(password).
		SetClientID(clientID).SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).SetProtocolVersion(4).SetOrderMatters(false).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { c.msgs <- m }).
		SetConnectionLostHandler(func(_ paho3.Client, err error) { c.lost <- err })
	for _, f := range opts {
		f(o)
	}
	c.Client = paho3.NewClient(o)
	tok := c.Connect()
	// The wait is the client's connect timeout when an option raised it
	// (the handshake tests wait connackWait), else 5s.
	if !tok.WaitTimeout(max(5*time.Second, o.ConnectTimeout)) {
		return c, 0, errors.New("connect timed out")
	}
	code := tok.(*paho3.ConnectToken).ReturnCode()
	if tok.Error() != nil {
		return c, code, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, code, nil
}

func mustV3(t testing.TB, addr, username, password, clientID string, clean bool, opts ...func(*paho3.ClientOptions)) *v3 {
	t.Helper()
	c, _, err := dialV3(t, addr, username, password, clientID, clean, opts...)
	if err != nil {
		t.Fatalf("connect %s (3.1.1): %v", username, err)
	}
	return c
}

func (c *v3) sub(t testing.TB, filter string, qos byte) {
	t.Helper()
	tok := c.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

// subCode subscribes and returns the SUBACK return code.
func (c *v3) subCode(t testing.TB, filter string, qos byte) byte {
	t.Helper()
	tok := c.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatalf("subscribe %s: no SUBACK", filter)
	}
	return tok.(*paho3.SubscribeToken).Result()[filter]
}

func (c *v3) pub(t testing.TB, topic, payload string, qos byte, retain bool) {
	t.Helper()
	tok := c.Publish(topic, qos, retain, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func (c *v3) expect(t testing.TB, topic, payload string) paho3.Message {
	t.Helper()
	select {
	case m := <-c.msgs:
		if m.Topic() != topic || string(m.Payload()) != payload {
			t.Fatalf("got %s %q, want %s %q", m.Topic(), m.Payload(), topic, payload)
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatalf("no message on %s within 5s", topic)
	}
	return nil
}

func (c *v3) quiet(t testing.TB, d time.Duration, what string) {
	t.Helper()
	select {
	case m := <-c.msgs:
		t.Fatalf("%s: got %s %q, want nothing", what, m.Topic(), m.Payload())
	case <-time.After(d):
	}
}

// eventually polls cond until it holds or the time is up.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v", what, within)
}

func user(tenant, device string) string { return fmt.Sprintf("%s/%s", tenant, device) }

func contextWithTimeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

func intp(i int) *int { return &i }

// barrier returns once the broker has finished routing everything this
// client published before: mochi acknowledges a publish before it routes
// it, but handles one connection's packets in order, so the PUBACK of a
// later publish means the earlier ones are routed.
func (c *v5) barrier(t testing.TB) {
	t.Helper()
	c.pub(t, "barrier", "", 1, false)
}
