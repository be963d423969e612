package broker_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// waitKicked waits for a v5 client to be disconnected by the server and
// returns the DISCONNECT reason code it got.
func waitKicked(t *testing.T, c *v5, within time.Duration, what string) byte {
	t.Helper()
	select {
	case d := <-c.discs:
		return d.ReasonCode
	case <-c.closed:
		return 0
	case <-time.After(within):
		t.Fatalf("%s: still connected after %v", what, within)
	}
	return 0
}

// TestDeviceChangesKickLiveConnections: rotating the secret, disabling or
// deleting a device ends its live connection within a second; other changes
// do not.
func TestDeviceChangesKickLiveConnections(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	cases := []struct {
		name   string
		change func(name string) error
	}{
		{"rotate", func(n string) error { _, _, err := s.store.RotateDeviceSecret(ctx, "acme", n); return err }},
		{"disable", func(n string) error {
			off := false
			_, err := s.store.UpdateDevice(ctx, "acme", n, tenants.DeviceUpdate{Enabled: &off})
			return err
		}},
		{"delete", func(n string) error { return s.store.DeleteDevice(ctx, "acme", n) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := "d-" + tc.name
			secret := s.device("acme", name, tenants.ClientIDsAny)
			c := mustV5(t, s.addr, user("acme", name), secret, name)
			c3 := mustV3(t, s.addr, user("acme", name), secret, name+"-3", true)
			if err := tc.change(name); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if code := waitKicked(t, c, time.Second, tc.name); code != 0x98 {
				t.Errorf("DISCONNECT reason 0x%02x, want 0x98 (administrative action)", code)
			}
			select {
			case <-c3.lost:
			case <-time.After(time.Second):
				t.Errorf("the 3.1.1 connection survived %s", tc.name)
			}
			t.Logf("both connections ended within %v", time.Since(start))
			if code := refusedV5(t, s.addr, user("acme", name), secret, name); code != 0x86 {
				t.Errorf("reconnect with the old secret: got 0x%02x, want 0x86", code)
			}
		})
	}
	// A metadata change leaves the connection alone.
	secret := s.device("acme", "calm")
	c := mustV5(t, s.addr, user("acme", "calm"), secret, "calm")
	md := map[string]string{"room": "lab"}
	if _, err := s.store.UpdateDevice(ctx, "acme", "calm", tenants.DeviceUpdate{Metadata: &md}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.discs:
		t.Error("a metadata change disconnected the device")
	case <-time.After(300 * time.Millisecond):
	}
}

// TestGatewayClientIDs: switching a gateway back to exact ids drops the
// connections whose id is not the device name.
func TestGatewayBoundAgain(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	secret := s.device("acme", "gw", tenants.ClientIDsAny)
	other := mustV5(t, s.addr, "acme/gw", secret, "sensor-7")
	own := mustV5(t, s.addr, "acme/gw", secret, "gw")
	exact := tenants.ClientIDsExact
	if _, err := s.store.UpdateDevice(ctx, "acme", "gw", tenants.DeviceUpdate{ClientIDs: &exact}); err != nil {
		t.Fatal(err)
	}
	waitKicked(t, other, time.Second, "a gateway id after binding")
	select {
	case <-own.discs:
		t.Error("the connection using the device's own name was dropped")
	case <-time.After(200 * time.Millisecond):
	}
}

// TestACLEditAppliesLive: a rule change applies to the next publish,
// subscription and delivery of connections that are already up.
func TestACLEditAppliesLive(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	sub := mustV5(t, s.addr, "acme/sub", s.device("acme", "sub"), "sub")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	sub.sub(t, "data/#", 1)
	pub.pub(t, "data/x", "before", 1, false)
	sub.expect(t, "data/x", "before")
	// Delivered once before the rule: the connection's kept read decision
	// for the topic (see mayReceive) must not outlive the change.
	pub.pub(t, "data/secret", "visible", 1, false)
	sub.expect(t, "data/secret", "visible")

	rule, err := s.store.CreateACLRule(ctx, "acme", tenants.ACLRuleInput{Effect: tenants.Deny, Action: tenants.ActionSubscribe, Topic: "data/secret", Position: intp(0)})
	if err != nil {
		t.Fatal(err)
	}
	pub.pub(t, "data/secret", "hidden", 1, false)
	pub.pub(t, "data/x", "after", 1, false)
	sub.expect(t, "data/x", "after") // the secret one was not delivered: delivery checks the rules too

	if _, err := s.store.CreateACLRule(ctx, "acme", tenants.ACLRuleInput{Effect: tenants.Deny, Action: tenants.ActionPublish, Topic: "data/#", Position: intp(0)}); err != nil {
		t.Fatal(err)
	}
	if r := pub.pub(t, "data/x", "refused", 1, false); r.ReasonCode != 0x87 {
		t.Errorf("publish after a deny rule: got 0x%02x, want 0x87", r.ReasonCode)
	}
	if err := s.store.DeleteACLRule(ctx, "acme", rule.ID); err != nil {
		t.Fatal(err)
	}
	if got := sub.sub(t, "data/secret", 1); got != 1 {
		t.Errorf("subscribe after the deny was removed: got 0x%02x, want 1", got)
	}
}

// TestSuspendAndDelete: suspending a tenant disconnects its devices and
// refuses new ones; deleting it stops its broker.
func TestSuspendAndDelete(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.tenant("other")
	secret := s.device("acme", "d1")
	c := mustV5(t, s.addr, "acme/d1", secret, "d1")
	bystander := mustV5(t, s.addr, "other/d1", s.device("other", "d1"), "d1")
	yes := true
	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Suspended: &yes}); err != nil {
		t.Fatal(err)
	}
	waitKicked(t, c, time.Second, "suspension")
	if code := refusedV5(t, s.addr, "acme/d1", secret, "d1"); code != 0x8A {
		t.Errorf("connect while suspended: got 0x%02x, want 0x8A", code)
	}
	no := false
	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Suspended: &no}); err != nil {
		t.Fatal(err)
	}
	c = mustV5(t, s.addr, "acme/d1", secret, "d1")
	if err := s.store.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	waitKicked(t, c, time.Second, "tenant deletion")
	if code := refusedV5(t, s.addr, "acme/d1", secret, "d1"); code != 0x86 {
		t.Errorf("connect to a deleted tenant: got 0x%02x, want 0x86", code)
	}
	bystander.sub(t, "x", 0)
	select {
	case <-bystander.discs:
		t.Error("another tenant's device was disconnected")
	default:
	}
}

// TestPresenceAndDisconnect: the hub knows who is online, since when and
// from where, and can end a device's connections.
func TestPresenceAndDisconnect(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	secret := s.device("acme", "d1")
	if conns := s.hub.Connections("acme", "d1"); len(conns) != 0 {
		t.Fatalf("offline device has connections: %+v", conns)
	}
	c := mustV5(t, s.addr, "acme/d1", secret, "d1")
	eventually(t, 2*time.Second, "presence", func() bool { return len(s.hub.Connections("acme", "d1")) == 1 })
	conn := s.hub.Connections("acme", "d1")[0]
	if conn.ClientID != "d1" || conn.ProtocolVersion != 5 || conn.RemoteAddr != c.conn.LocalAddr().String() || time.Since(conn.ConnectedAt) > time.Minute {
		t.Errorf("connection: got %+v", conn)
	}
	eventually(t, 2*time.Second, "last seen recorded", func() bool {
		d, _ := s.store.Device(ctx, "acme", "d1")
		return d.LastSeenAt != nil
	})
	if n := s.hub.Disconnect("acme", "d1"); n != 1 {
		t.Errorf("Disconnect: got %d, want 1", n)
	}
	if code := waitKicked(t, c, time.Second, "disconnect"); code != 0x98 {
		t.Errorf("reason 0x%02x, want 0x98", code)
	}
	eventually(t, 2*time.Second, "offline", func() bool { return len(s.hub.Connections("acme", "d1")) == 0 })
	if n := s.hub.Disconnect("nope", "d1"); n != 0 {
		t.Errorf("Disconnect in a tenant with no broker: %d", n)
	}
}

// TestHTTPPublish: a message published through the hub reaches subscribers
// allowed to read it, and only in its tenant.
func TestHTTPPublish(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.tenant("other")
	sub := mustV5(t, s.addr, "acme/sub", s.device("acme", "sub"), "sub")
	sub.sub(t, "cmd/#", 1)
	spy := mustV5(t, s.addr, "other/spy", s.device("other", "spy"), "spy")
	spy.sub(t, "#", 1)
	if err := s.hub.Publish(context.Background(), "acme", dataplane.Message{Topic: "cmd/reboot", Payload: []byte("now"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	sub.expect(t, "cmd/reboot", "now")
	spy.quiet(t, 200*time.Millisecond, "another tenant's publish")
	// Retained through the API, then read by a newcomer.
	if err := s.hub.Publish(context.Background(), "acme", dataplane.Message{Topic: "cfg/interval", Payload: []byte("60"), Retain: true}); err != nil {
		t.Fatal(err)
	}
	late := mustV5(t, s.addr, "acme/late", s.device("acme", "late"), "late")
	late.sub(t, "cfg/#", 0)
	late.expect(t, "cfg/interval", "60")

	for _, bad := range []dataplane.Message{{Topic: "a/+"}, {Topic: "$SYS/x"}, {Topic: ""}, {Topic: "x", QoS: 3}} {
		var fe *tenants.FieldError
		if err := s.hub.Publish(context.Background(), "acme", bad); !errors.As(err, &fe) {
			t.Errorf("Publish(%+v): got %v, want a field error", bad, err)
		}
	}
	if err := s.hub.Publish(context.Background(), "nope", dataplane.Message{Topic: "x"}); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("publish to an unknown tenant: got %v", err)
	}
	big := make([]byte, 129*1024)
	var qe *tenants.QuotaError
	if err := s.hub.Publish(context.Background(), "acme", dataplane.Message{Topic: "x", Payload: big}); !errors.As(err, &qe) || qe.Quota != "max_packet_size" {
		t.Errorf("publish over max_packet_size: got %v", err)
	}
}

// TestIdleInstancesStop: a tenant's broker with no connections, sessions or
// retained messages stops after the idle time; one with a retained message
// or a waiting session stays.
func TestIdleInstancesStop(t *testing.T) {
	s := newStack(t, func(c *broker.Config) { c.IdleTimeout = 200 * time.Millisecond })
	s.tenant("brief")
	s.tenant("keeper")
	s.tenant("sessions")
	c := mustV5(t, s.addr, "brief/d1", s.device("brief", "d1"), "d1")
	k := mustV5(t, s.addr, "keeper/d1", s.device("keeper", "d1"), "d1")
	k.pub(t, "state", "kept", 1, true)
	p := mustV5(t, s.addr, "sessions/d1", s.device("sessions", "d1"), "d1", func(cp *paho.Connect) {
		cp.CleanStart = false
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}
	})
	if n := s.hub.Instances(); n != 3 {
		t.Fatalf("%d instances running, want 3", n)
	}
	c.Disconnect(&paho.Disconnect{})
	k.Disconnect(&paho.Disconnect{})
	p.Disconnect(&paho.Disconnect{})
	eventually(t, 3*time.Second, "the idle instance stops", func() bool { return s.hub.Instances() == 2 })
	time.Sleep(400 * time.Millisecond)
	if n := s.hub.Instances(); n != 2 {
		t.Errorf("%d instances, want 2: the retained message and the session keep theirs", n)
	}
	// The stopped tenant starts again on the next connection.
	mustV5(t, s.addr, "brief/d2", s.device("brief", "d2"), "d2")
}

// TestCloseIsPrompt: closing the hub ends connections still in handshake at
// once, without waiting for their CONNECT deadline, and a second Close is
// harmless.
func TestCloseIsPrompt(t *testing.T) {
	s := newStack(t, func(c *broker.Config) { c.ConnectTimeout = time.Minute })
	s.tenant("acme")
	c := mustV5(t, s.addr, "acme/d1", s.device("acme", "d1"), "d1")
	var silent []net.Conn
	for range 20 {
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		silent = append(silent, conn)
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	s.hub.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
	if code := waitKicked(t, c, time.Second, "hub close"); code != 0x8B {
		t.Errorf("reason 0x%02x, want 0x8B (server shutting down)", code)
	}
	s.hub.Close()
}

// flakyDirectory is the tenant store, unable to answer for devices while
// down is set.
type flakyDirectory struct {
	broker.Directory
	down atomic.Bool
}

func (f *flakyDirectory) Device(ctx context.Context, tenant, name string) (tenants.Device, error) {
	if f.down.Load() {
		return tenants.Device{}, errors.New("directory down")
	}
	return f.Directory.Device(ctx, tenant, name)
}

// TestChangeRetriedWhileDirectoryDown: a secret rotated while the directory
// cannot be asked about the device does not leave the old credential
// connected: the change waits in the retry queue and ends the connection
// once the directory answers again.
func TestChangeRetriedWhileDirectoryDown(t *testing.T) {
	var dir *flakyDirectory
	s := newStack(t, func(c *broker.Config) {
		dir = &flakyDirectory{Directory: c.Directory}
		c.Directory = dir
	})
	s.tenant("acme")
	secret := s.device("acme", "d1")
	c := mustV5(t, s.addr, user("acme", "d1"), secret, "d1")
	dir.down.Store(true)
	if _, _, err := s.store.RotateDeviceSecret(ctx, "acme", "d1"); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-c.discs:
		t.Fatalf("disconnected (0x%02x) while the directory could not say why", d.ReasonCode)
	case <-time.After(500 * time.Millisecond):
	}
	eventually(t, 2*time.Second, "the failed change logged for a retry", func() bool {
		return strings.Contains(s.logs.String(), "apply change: will retry")
	})
	dir.down.Store(false)
	if code := waitKicked(t, c, 5*time.Second, "after the directory is back"); code != 0x98 {
		t.Errorf("DISCONNECT reason 0x%02x, want 0x98 (administrative action)", code)
	}
}
