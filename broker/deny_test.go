package broker_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// denyStack is a stack that records events.
type denyStack struct {
	*stack
	events *events.Memory
}

func newDenyStack(t *testing.T) *denyStack {
	t.Helper()
	ev := events.NewMemory(1000)
	return &denyStack{stack: newStack(t, func(c *broker.Config) { c.Events = ev }), events: ev}
}

// denials returns a tenant's publish_denied events of device, oldest first.
func (s *denyStack) denials(tenant, device string) []events.Event {
	var out []events.Event
	for _, e := range s.events.Recent(tenant) {
		if e.Type == events.PublishDenied && e.Device == device {
			out = append(out, e)
		}
	}
	return out
}

// expectDenial waits for a publish_denied event of device for topic with
// count and reason.
func (s *denyStack) expectDenial(t *testing.T, tenant, device, topic string, count int64, reason string) {
	t.Helper()
	var got []events.Event
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		got = s.denials(tenant, device)
		for _, e := range got {
			if e.MessageTopic == topic && e.Count == count && e.Reason == reason && e.Tenant == tenant {
				return
			}
		}
	}
	t.Fatalf("%s/%s: publish_denied events %+v, want one for %s, count %d, reason %q", tenant, device, got, topic, count, reason)
}

// lostWithin reports whether a 3.1.1 client's connection ends within d.
func (c *v3) lostWithin(d time.Duration) bool {
	select {
	case <-c.lost:
		return true
	case <-time.After(d):
		return false
	}
}

// TestDenyAction: a publish the rules deny, by MQTT 5 and 3.1.1 clients at
// every QoS, under each deny_action. Nothing denied is delivered; each
// denial raises a publish_denied event; the connection stays, except a
// 3.1.1 QoS 1 or 2 publisher under disconnect (Roost's behaviour before
// the setting, kept for it).
func TestDenyAction(t *testing.T) {
	s := newDenyStack(t)
	for _, action := range []tenants.DenyAction{tenants.DenyIgnore, tenants.DenyDisconnect} {
		t.Run(string(action), func(t *testing.T) {
			tenant := "t-" + string(action)
			s.tenant(tenant)
			s.rules(tenant, deny(tenants.ActionPublish, "secret/#"), allow(tenants.ActionAll, "#"))
			if action == tenants.DenyDisconnect {
				s.denyAction(tenant, action)
			}
			watcher := mustV5(t, s.addr, user(tenant, "watcher"), s.device(tenant, "watcher"), "watcher")
			watcher.sub(t, "#", 2)
			for qos := range byte(3) {
				name := fmt.Sprintf("v5-q%d", qos)
				c := mustV5(t, s.addr, user(tenant, name), s.device(tenant, name), name)
				r := c.pub(t, "secret/x", "denied", qos, false)
				if qos > 0 && (r == nil || r.ReasonCode != 0x87) {
					t.Errorf("%s: MQTT 5 QoS %d denied publish answered %+v, want reason 0x87", action, qos, r)
				}
				// Still connected, and the denied message went nowhere: the
				// watcher's next message is this one.
				c.pub(t, "ok/"+name, "after", 1, false)
				watcher.expect(t, "ok/"+name, "after")
				s.expectDenial(t, tenant, name, "secret/x", 1, "denied by the tenant's rules")

				name = fmt.Sprintf("v3-q%d", qos)
				c3 := mustV3(t, s.addr, user(tenant, name), s.device(tenant, name), name, true)
				tok := c3.Publish("secret/x", qos, false, "denied")
				if action == tenants.DenyDisconnect && qos > 0 {
					if !c3.lostWithin(5 * time.Second) {
						t.Errorf("disconnect: a 3.1.1 QoS %d denied publish left the connection open", qos)
					}
				} else {
					if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
						t.Errorf("%s: a 3.1.1 QoS %d denied publish was not acknowledged: %v", action, qos, tok.Error())
					}
					c3.pub(t, "ok/"+name, "after", 1, false)
					watcher.expect(t, "ok/"+name, "after")
					if c3.lostWithin(0) || !c3.IsConnectionOpen() {
						t.Errorf("%s: a 3.1.1 QoS %d denied publish ended the connection", action, qos)
					}
				}
				s.expectDenial(t, tenant, name, "secret/x", 1, "denied by the tenant's rules")
			}
			watcher.quiet(t, 200*time.Millisecond, "a denied publish")
			if n := s.hub.PublishDenials(tenant); n != 6 {
				t.Errorf("%s: %d denials counted, want 6", action, n)
			}
		})
	}
}

// TestDenyActionLive: a change of deny_action reaches connections opened
// before it, without a reconnect, both ways.
func TestDenyActionLive(t *testing.T) {
	s := newDenyStack(t)
	s.tenant("acme")
	s.rules("acme", deny(tenants.ActionPublish, "secret/#"), allow(tenants.ActionAll, "#"))
	old := mustV3(t, s.addr, user("acme", "old"), s.device("acme", "old"), "old", true)
	old.pub(t, "secret/x", "denied, acknowledged", 1, false)

	s.denyAction("acme", tenants.DenyDisconnect)
	old.Publish("secret/x", 1, false, "denied, closed")
	if !old.lostWithin(5 * time.Second) {
		t.Fatal("after the change to disconnect, a denied publish on a connection from before left it open")
	}

	kept := mustV3(t, s.addr, user("acme", "kept"), s.device("acme", "kept"), "kept", true)
	s.denyAction("acme", tenants.DenyIgnore)
	kept.pub(t, "secret/x", "denied, acknowledged again", 2, false)
	if kept.lostWithin(200 * time.Millisecond) {
		t.Error("after the change back to ignore, a denied publish on a connection from before closed it")
	}
}

// TestDenyActionTenantsApart: two tenants with the same device names and
// rules and different deny_actions: each device gets its own tenant's, and
// each tenant's denials are its own (events, $events topics, counts).
func TestDenyActionTenantsApart(t *testing.T) {
	s := newDenyStack(t)
	for _, tenant := range []string{"acme", "beta"} {
		s.tenant(tenant)
		s.rules(tenant, deny(tenants.ActionPublish, "secret/#"), allow(tenants.ActionSubscribe, "$events/#"), allow(tenants.ActionAll, "#"))
	}
	s.denyAction("acme", tenants.DenyDisconnect)
	apps := map[string]*v5{}
	for _, tenant := range []string{"acme", "beta"} {
		apps[tenant] = mustV5(t, s.addr, user(tenant, "app"), s.device(tenant, "app"), "app")
		apps[tenant].sub(t, "$events/publish/#", 1)
	}
	acme := mustV3(t, s.addr, user("acme", "d"), s.device("acme", "d"), "d", true)
	beta := mustV3(t, s.addr, user("beta", "d"), s.device("beta", "d"), "d", true)

	beta.pub(t, "secret/beta", "denied", 1, false)
	acme.Publish("secret/acme", 1, false, "denied")
	if !acme.lostWithin(5 * time.Second) {
		t.Error("acme (disconnect): the denied publish left the connection open")
	}
	if beta.lostWithin(200*time.Millisecond) || !beta.IsConnectionOpen() {
		t.Error("beta (ignore): the denied publish closed the connection: acme's deny_action reached it")
	}
	for tenant, topic := range map[string]string{"acme": "secret/acme", "beta": "secret/beta"} {
		s.expectDenial(t, tenant, "d", topic, 1, "denied by the tenant's rules")
		if got := s.denials(tenant, "d"); len(got) != 1 {
			t.Errorf("%s: publish_denied events %+v, want its own one", tenant, got)
		}
		select {
		case m := <-apps[tenant].msgs:
			want := fmt.Sprintf(`"tenant":%q,"type":"publish_denied","device":"d"`, tenant)
			if m.Topic != "$events/publish/denied/d" || !strings.Contains(string(m.Payload), want) || !strings.Contains(string(m.Payload), `"topic":"`+topic+`"`) {
				t.Errorf("%s's app got %s %s, want its own tenant's publish_denied event for %s", tenant, m.Topic, m.Payload, topic)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s's app got no publish_denied event on $events", tenant)
		}
		apps[tenant].quiet(t, 200*time.Millisecond, "another tenant's event")
	}
	if a, b := s.hub.PublishDenials("acme"), s.hub.PublishDenials("beta"); a != 1 || b != 1 {
		t.Errorf("denials counted: acme %d, beta %d, want 1 each", a, b)
	}
}

// TestPublishDeniedFolded: a device that loops on a denied publish cannot
// flood the event log: one event a minute per device and topic, counting
// the denials since the last, and at most one a second per device however
// many topics it cycles through; every denial is counted.
func TestPublishDeniedFolded(t *testing.T) {
	s := newDenyStack(t)
	s.tenant("acme")
	s.rules("acme", deny(tenants.ActionPublish, "secret/#"), allow(tenants.ActionAll, "#"))
	d := mustV5(t, s.addr, user("acme", "d"), s.device("acme", "d"), "d")
	for range 50 {
		d.pub(t, "secret/a", "again", 1, false)
	}
	s.expectDenial(t, "acme", "d", "secret/a", 1, "denied by the tenant's rules")
	// Many topics at once, at QoS 0: fire and forget, as a looping device
	// would.
	start := time.Now()
	for i := range 1000 {
		if _, err := d.Publish(context.Background(), &paho.Publish{Topic: fmt.Sprintf("secret/%d", i), Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	d.barrier(t)
	elapsed := time.Since(start)
	if n := s.hub.PublishDenials("acme"); n != 1050 {
		t.Errorf("denials counted: %d, want 1050", n)
	}
	if got, most := len(s.denials("acme", "d")), int(elapsed/time.Second)+2; got > most {
		t.Errorf("1,050 denials in %v raised %d events, want at most %d (one a second)", elapsed, got, most)
	}

	// With a shorter window, the next event of a topic counts the denials
	// since the last one.
	broker.SetDenialWindow(s.hub, 200*time.Millisecond)
	time.Sleep(1100 * time.Millisecond) // past the device's second too
	d.pub(t, "secret/a", "once more", 1, false)
	s.expectDenial(t, "acme", "d", "secret/a", 50, "denied by the tenant's rules")
}

// TestReservedTopics: devices never publish under $SYS, $events, $roost or
// $share, in any case, whatever the rules say, with either protocol and
// under the tenant's deny_action; the event names the topic sent. The API
// cannot either.
func TestReservedTopics(t *testing.T) {
	s := newDenyStack(t)
	s.tenant("acme")
	s.rules("acme", allow(tenants.ActionAll, "$events/#"), allow(tenants.ActionAll, "$roost/#"), allow(tenants.ActionAll, "$Events/#"), allow(tenants.ActionAll, "#"))
	spy := mustV5(t, s.addr, user("acme", "spy"), s.device("acme", "spy"), "spy")
	spy.sub(t, "$events/#", 1)
	spy.sub(t, "$roost/#", 1)
	spy.sub(t, "#", 1)
	var pubs3 []*v3
	for i, topic := range []string{"$SYS/broker/uptime", "$sys/x", "$SYSTEM/x", "$events/presence/connected/pub", "$Events/x",
		"$roost/reserved", "$roost/withdrawn-will", "$share/g/x", "$SHARE/g/x"} {
		// A device each: a device's denials raise one event a second.
		name := fmt.Sprintf("p%d", i)
		pub := mustV5(t, s.addr, user("acme", name), s.device("acme", name), name)
		if r := pub.pub(t, topic, "spoofed", 1, false); r.ReasonCode != 0x87 {
			t.Errorf("MQTT 5 PUBLISH to %s: PUBACK %#x, want 0x87", topic, r.ReasonCode)
		}
		s.expectDenial(t, "acme", name, topic, 1, "reserved topic")
		pub3 := mustV3(t, s.addr, user("acme", name+"-3"), s.device("acme", name+"-3"), name+"-3", true)
		pub3.pub(t, topic, "spoofed", 2, false) // ignore: acknowledged, dropped
		s.expectDenial(t, "acme", name+"-3", topic, 1, "reserved topic")
		pubs3 = append(pubs3, pub3)
		if err := s.hub.Publish(ctx, "acme", dataplane.Message{Topic: topic, Payload: []byte("spoofed")}); err == nil || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("API publish to %s: %v, want refused as reserved", topic, err)
		}
	}
	for {
		select {
		case m := <-spy.msgs:
			if string(m.Payload) == "spoofed" {
				t.Errorf("a reserved topic's message was delivered: %s", m.Topic)
			}
			continue
		case <-time.After(300 * time.Millisecond):
		}
		break
	}
	for _, c := range pubs3 {
		if !c.IsConnectionOpen() {
			t.Error("ignore: a 3.1.1 publisher to a reserved topic was disconnected")
		}
	}
}

// TestDollarTopics: a $-topic the hub does not reserve is a topic the
// rules decide, but only a rule naming it grants it (the default # does
// not), and no filter starting with a wildcard receives it [MQTT-4.7.2-1]:
// not #, +/..., a shared $share/g/#, nor the retained message sent to a new
// subscription to #, nor the console's live view on #; a filter naming
// $foo does.
func TestDollarTopics(t *testing.T) {
	s := newDenyStack(t)
	s.tenant("acme")
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	if r := pub.pub(t, "$foo/bar", "x", 1, false); r.ReasonCode != 0x87 {
		t.Fatalf("a $-topic under the default rule #: PUBACK %#x, want 0x87", r.ReasonCode)
	}
	s.expectDenial(t, "acme", "pub", "$foo/bar", 1, "denied by the tenant's rules")

	s.rules("acme", allow(tenants.ActionAll, "$foo/#"), allow(tenants.ActionAll, "#"))
	wild := map[string]*v5{}
	for name, filter := range map[string]string{"hash": "#", "plus": "+/bar", "shared": "$share/g/#", "sharedplus": "$share/p/+/bar"} {
		c := mustV5(t, s.addr, user("acme", name), s.device("acme", name), name)
		if code := c.sub(t, filter, 1); code != 1 {
			t.Fatalf("subscribe %s: %#x", filter, code)
		}
		c.settle(t)
		wild[filter] = c
	}
	hash3 := mustV3(t, s.addr, user("acme", "hash3"), s.device("acme", "hash3"), "hash3", true)
	hash3.sub(t, "#", 1)
	hash3.sub(t, "settle", 0)
	named := map[string]*v5{}
	for name, filter := range map[string]string{"named": "$foo/#", "exact": "$foo/bar", "sharednamed": "$share/h/$foo/#"} {
		c := mustV5(t, s.addr, user("acme", name), s.device("acme", name), name)
		if code := c.sub(t, filter, 1); code != 1 {
			t.Fatalf("subscribe %s: %#x, want granted", filter, code)
		}
		c.settle(t)
		named[filter] = c
	}
	named3 := mustV3(t, s.addr, user("acme", "named3"), s.device("acme", "named3"), "named3", true)
	named3.sub(t, "$foo/+", 1)
	named3.sub(t, "settle", 0)
	var mu sync.Mutex
	var viewed []string
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.hub.Watch(wctx, "acme", "viewer", "#", func(m dataplane.Message) {
		mu.Lock()
		viewed = append(viewed, m.Topic)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	// A view on $foo/# sees $foo/bar; one on a reserved prefix is refused.
	var named4 []string
	if err := s.hub.Watch(wctx, "acme", "viewer", "$foo/#", func(m dataplane.Message) {
		mu.Lock()
		named4 = append(named4, m.Topic)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"$events/#", "$SYS/#", "$share/g/#", "$roost/#"} {
		if err := s.hub.Watch(wctx, "acme", "viewer2", f, func(dataplane.Message) {}); err == nil || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("a live view on %s: %v, want refused as reserved", f, err)
		}
	}
	// As settle for the views, which scanned for retained messages in this
	// goroutine: one more takes the topic index's lock after those scans,
	// as the retained publish below does before its write.
	if err := s.hub.Watch(wctx, "acme", "viewer2", "settle", func(dataplane.Message) {}); err != nil {
		t.Fatal(err)
	}

	if r := pub.pub(t, "$foo/bar", "x", 1, true); r.ReasonCode != 0 {
		t.Fatalf("a $-topic a rule names: PUBACK %#x, want 0", r.ReasonCode)
	}
	for _, c := range named {
		c.expect(t, "$foo/bar", "x")
	}
	named3.expect(t, "$foo/bar", "x")
	if err := s.hub.Publish(ctx, "acme", dataplane.Message{Topic: "$foo/api", Payload: []byte("y"), QoS: 1}); err != nil {
		t.Fatalf("API publish to $foo/api: %v", err)
	}
	named["$foo/#"].expect(t, "$foo/api", "y")
	for filter, c := range wild {
		c.quiet(t, 100*time.Millisecond, "a $-topic to "+filter)
	}
	hash3.quiet(t, 100*time.Millisecond, "a $-topic to # (3.1.1)")

	// The retained $foo/bar: not for a new #, for a new $foo/#.
	late := mustV5(t, s.addr, user("acme", "late"), s.device("acme", "late"), "late")
	late.sub(t, "#", 1)
	late.sub(t, "+/bar", 1)
	late.quiet(t, 300*time.Millisecond, "a retained $-topic sent to a new # or +/bar")
	late3 := mustV3(t, s.addr, user("acme", "late3"), s.device("acme", "late3"), "late3", true)
	late3.sub(t, "#", 1)
	late3.quiet(t, 300*time.Millisecond, "a retained $-topic sent to a new # (3.1.1)")
	late.sub(t, "$foo/#", 1)
	late.expect(t, "$foo/bar", "x")

	pub.pub(t, "plain", "z", 1, false)
	wild["#"].expect(t, "plain", "z")
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(viewed) != "[plain]" {
		t.Errorf("the live view on # saw %v, want [plain]", viewed)
	}
	if fmt.Sprint(named4) != "[$foo/bar $foo/api]" {
		t.Errorf("the live view on $foo/# saw %v, want [$foo/bar $foo/api]", named4)
	}
}

// settle returns once the broker has sent the client's last subscription
// its retained messages: mochi answers a SUBSCRIBE before it scans them,
// and retaining a message on a new topic while it scans is a data race in
// mochi v2.7.9 (TopicsIndex.RetainMessage and scanMessages), which -race
// reports. A client's packets are handled in order, so the SUBACK of a
// second SUBSCRIBE means the first is done.
func (c *v5) settle(t testing.TB) {
	t.Helper()
	c.sub(t, "settle", 0)
}

// TestWillDeniedWhenSent: a Will whose topic the rules deny by the time it
// is sent is dropped and raised as a denied publish, with MQTT 5 and
// 3.1.1, under either deny_action.
func TestWillDeniedWhenSent(t *testing.T) {
	s := newDenyStack(t)
	for _, action := range []tenants.DenyAction{tenants.DenyIgnore, tenants.DenyDisconnect} {
		tenant := "t-" + string(action)
		s.tenant(tenant)
		s.denyAction(tenant, action)
		watcher := mustV5(t, s.addr, user(tenant, "watcher"), s.device(tenant, "watcher"), "watcher")
		watcher.sub(t, "status/#", 1)
		d5 := mustV5(t, s.addr, user(tenant, "d5"), s.device(tenant, "d5"), "d5", withWill("status/d5", "gone", false, 0))
		var conn3 net.Conn
		mustV3(t, s.addr, user(tenant, "d3"), s.device(tenant, "d3"), "d3", true, func(o *paho3.ClientOptions) {
			o.SetWill("status/d3", "gone", 1, false)
			o.SetCustomOpenConnectionFn(func(u *url.URL, _ paho3.ClientOptions) (net.Conn, error) {
				c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
				conn3 = c
				return c, err
			})
		})
		s.rules(tenant, deny(tenants.ActionPublish, "status/#"), allow(tenants.ActionAll, "#"))
		d5.conn.Close()
		conn3.Close()
		s.expectDenial(t, tenant, "d5", "status/d5", 1, "Will denied by the tenant's rules")
		s.expectDenial(t, tenant, "d3", "status/d3", 1, "Will denied by the tenant's rules")
		watcher.quiet(t, 200*time.Millisecond, string(action)+": a denied Will")
	}
}
