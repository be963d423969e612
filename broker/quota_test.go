package broker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// quotaStack is a stack that records events, with one tenant "acme".
type quotaStack struct {
	*stack
	events *events.Memory
}

func newQuotaStack(t *testing.T) *quotaStack {
	t.Helper()
	ev := events.NewMemory(1000)
	s := &quotaStack{events: ev}
	s.stack = newStack(t, func(c *broker.Config) { c.Events = ev })
	s.tenant("acme")
	return s
}

// setQuotas overrides quotas of acme, as the operator does.
func (s *quotaStack) setQuotas(t *testing.T, q map[string]int64) {
	t.Helper()
	u := tenants.AdminTenantUpdate{Quotas: map[string]*int64{}}
	for k, v := range q {
		u.Quotas[k] = &v
	}
	updated, err := s.store.AdminUpdateTenant(ctx, "acme", u)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the running broker has the new quotas", func() bool {
		q, running := s.hub.Quotas("acme")
		return !running || q == updated.Quotas()
	})
}

// expectQuotaEvent waits for a quota_exceeded event of acme's device.
func (s *quotaStack) expectQuotaEvent(t *testing.T, device, quota string, limit int64) {
	t.Helper()
	eventually(t, 5*time.Second, fmt.Sprintf("a %s event for %s", quota, device), func() bool {
		for _, e := range s.events.Recent("acme") {
			if e.Type == events.QuotaExceeded && e.Device == device && e.Quota == quota && e.Limit == limit {
				return true
			}
		}
		return false
	})
	if n := s.hub.QuotaHits("acme", quota); n < 1 {
		t.Errorf("%s hits counted: %d", quota, n)
	}
}

func (s *quotaStack) connectV5(t *testing.T, device string) *v5 {
	t.Helper()
	return mustV5(t, s.addr, "acme/"+device, s.device("acme", device), device)
}

// waitDisconnect waits for the server's DISCONNECT and returns its reason.
func waitDisconnect(t *testing.T, c *v5) byte {
	t.Helper()
	select {
	case d := <-c.discs:
		return d.ReasonCode
	case <-time.After(5 * time.Second):
		t.Fatal("no DISCONNECT from the server")
	}
	return 0
}

func TestQuotaMaxConnections(t *testing.T) {
	s := newQuotaStack(t)
	s.setQuotas(t, map[string]int64{"max_connections": 2})
	s.connectV5(t, "d1")
	s.connectV5(t, "d2")
	d3 := s.device("acme", "d3")
	if code := refusedV5(t, s.addr, "acme/d3", d3, "d3"); code != 0x97 {
		t.Errorf("third connection (v5): CONNACK %#x, want 0x97", code)
	}
	_, code, err := dialV3(t, s.addr, "acme/d4", s.device("acme", "d4"), "d4", true)
	if err == nil || code != 0x03 {
		t.Errorf("third connection (3.1.1): code %#x, err %v; want 0x03", code, err)
	}
	s.expectQuotaEvent(t, "d3", "max_connections", 2)
	// Raised live: the next connection is admitted.
	s.setQuotas(t, map[string]int64{"max_connections": 3})
	eventually(t, time.Second, "the raised limit applies", func() bool {
		_, err := dialV5(t, s.addr, "acme/d3", d3, "d3")
		return err == nil
	})
}

func TestQuotaConnectRate(t *testing.T) {
	s := newQuotaStack(t)
	s.setQuotas(t, map[string]int64{"connect_rate": 3})
	secret := s.device("acme", "d", tenants.ClientIDsAny)
	refused := 0
	start := time.Now()
	for i := range 8 {
		c, err := dialV5(t, s.addr, "acme/d", secret, fmt.Sprintf("c%d", i))
		if err != nil {
			if c.connack == nil || c.connack.ReasonCode != 0x9F {
				t.Fatalf("connect %d: %v, want CONNACK 0x9F\n%s", i, err, s.logs)
			}
			refused++
		}
	}
	// A burst of one second's worth (3) is allowed, then 3 a second.
	allowed, most := 8-refused, 3+int(math.Ceil(3*time.Since(start).Seconds()))
	if refused == 0 || allowed > most {
		t.Errorf("%d of 8 quick connects allowed in %v, want at most %d at 3/s and some refused", allowed, time.Since(start), most)
	}
	s.expectQuotaEvent(t, "d", "connect_rate", 3)
}

func TestQuotaPublishRateV5(t *testing.T) {
	s := newQuotaStack(t)
	s.setQuotas(t, map[string]int64{"publish_rate": 5})
	pub := s.connectV5(t, "pub")
	for i := range 30 {
		if _, err := pub.Publish(context.Background(), &paho.Publish{Topic: "x", QoS: 0, Payload: []byte(fmt.Sprint(i))}); err != nil {
			break
		}
	}
	if code := waitDisconnect(t, pub); code != 0x96 {
		t.Errorf("DISCONNECT %#x, want 0x96 (message rate too high)", code)
	}
	s.expectQuotaEvent(t, "pub", "publish_rate", 5)
}

func TestQuotaPublishRateV3DropsAndCounts(t *testing.T) {
	s := newQuotaStack(t)
	s.setQuotas(t, map[string]int64{"publish_rate": 5})
	sub := s.connectV5(t, "sub")
	sub.sub(t, "x", 1)
	pub := mustV3(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub", true)
	for i := range 20 {
		pub.pub(t, "x", fmt.Sprint(i), 1, false) // every one acknowledged
	}
	got := 0
	for {
		select {
		case <-sub.msgs:
			got++
			continue
		case <-time.After(500 * time.Millisecond):
		}
		break
	}
	if got < 5 || got > 10 {
		t.Errorf("%d of 20 delivered, want the burst of 5 (and what refilled meanwhile)", got)
	}
	s.expectQuotaEvent(t, "pub", "publish_rate", 5)
	if n := s.hub.Throttled("acme"); n < 20-int64(got) {
		t.Errorf("throttled count %d, want at least %d", n, 20-got)
	}
}

func TestQuotaTenantPublishRate(t *testing.T) {
	s := newQuotaStack(t)
	s.setQuotas(t, map[string]int64{"tenant_publish_rate": 6})
	a, b := s.connectV5(t, "a"), s.connectV5(t, "b")
	for i := range 10 {
		a.Publish(context.Background(), &paho.Publish{Topic: "x", Payload: []byte(fmt.Sprint(i))})
		b.Publish(context.Background(), &paho.Publish{Topic: "x", Payload: []byte(fmt.Sprint(i))})
	}
	var code byte
	select {
	case d := <-a.discs:
		code = d.ReasonCode
	case d := <-b.discs:
		code = d.ReasonCode
	case <-time.After(5 * time.Second):
		t.Fatal("neither connection was disconnected at twice the tenant's rate")
	}
	if code != 0x96 {
		t.Errorf("DISCONNECT %#x, want 0x96", code)
	}
	eventually(t, 5*time.Second, "a tenant_publish_rate event", func() bool {
		for _, e := range s.events.Recent("acme") {
			if e.Quota == "tenant_publish_rate" && e.Limit == 6 {
				return true
			}
		}
		return false
	})
}

// TestQuotaBandwidthThrottlesWithoutDropping: over bandwidth_in and
// bandwidth_out, messages are slowed, never dropped. The check is a lower
// bound on the time taken, which a throttle guarantees.
func TestQuotaBandwidthThrottlesWithoutDropping(t *testing.T) {
	for _, dir := range []string{"bandwidth_in", "bandwidth_out"} {
		t.Run(dir, func(t *testing.T) {
			s := newQuotaStack(t)
			s.setQuotas(t, map[string]int64{dir: 2000})
			sub := s.connectV5(t, "sub")
			sub.sub(t, "x", 1)
			pub := s.connectV5(t, "pub")
			payload := strings.Repeat("p", 1000)
			start := time.Now()
			for range 6 {
				pub.pub(t, "x", payload, 1, false)
			}
			for range 6 {
				sub.expect(t, "x", payload)
			}
			// 6,000+ bytes at 2,000 B/s with a burst of 2,000: at least 2s.
			if took := time.Since(start); took < 1800*time.Millisecond {
				t.Errorf("6 KB at 2 KB/s took %v: not throttled", took)
			}
		})
	}
}

// TestQuotaPacketSizeLive: the CONNACK announces max_packet_size; lowering
// it reaches an existing connection, whose next larger packet ends it with
// 0x95.
func TestQuotaPacketSizeLive(t *testing.T) {
	s := newQuotaStack(t)
	s.setQuotas(t, map[string]int64{"max_packet_size": 4096})
	pub := s.connectV5(t, "pub")
	if got := pub.connack.Properties.MaximumPacketSize; got == nil || *got != 4096 {
		t.Errorf("CONNACK maximum packet size %v, want 4096", got)
	}
	pub.pub(t, "x", strings.Repeat("a", 2000), 1, false)
	s.setQuotas(t, map[string]int64{"max_packet_size": 1000})
	pub.Publish(context.Background(), &paho.Publish{Topic: "x", Payload: []byte(strings.Repeat("a", 2000))})
	if code := waitDisconnect(t, pub); code != 0x95 {
		t.Errorf("DISCONNECT %#x, want 0x95", code)
	}
	s.expectQuotaEvent(t, "pub", "max_packet_size", 1000)
}

func TestQuotaMaxSubscriptions(t *testing.T) {
	s := newQuotaStack(t)
	s.setQuotas(t, map[string]int64{"max_subscriptions": 2})
	c := s.connectV5(t, "d")
	sctx, cancel := contextWithTimeout()
	defer cancel()
	sa, err := c.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "a", QoS: 1}, {Topic: "b", QoS: 1}, {Topic: "c", QoS: 1}}})
	if sa == nil {
		t.Fatal(err)
	}
	if fmt.Sprint(sa.Reasons) != "[1 1 151]" {
		t.Errorf("SUBACK %v, want [1 1 151] (0x97 for the third)", sa.Reasons)
	}
	if code := c.sub(t, "a", 0); code != 0 {
		t.Errorf("re-subscribing an existing filter: %#x", code)
	}
	s.expectQuotaEvent(t, "d", "max_subscriptions", 2)
	// The refused filter gets nothing; the granted ones do.
	pub := s.connectV5(t, "pub")
	pub.pub(t, "c", "no", 1, false)
	pub.pub(t, "b", "yes", 1, false)
	c.expect(t, "b", "yes")

	v3c := mustV3(t, s.addr, "acme/old", s.device("acme", "old"), "old", true)
	v3c.sub(t, "a", 1)
	v3c.sub(t, "b", 1)
	if code := v3c.subCode(t, "c", 1); code != 0x80 {
		t.Errorf("3.1.1 SUBACK %#x, want 0x80", code)
	}
}

func TestQuotaMaxRetained(t *testing.T) {
	s := newQuotaStack(t)
	s.setQuotas(t, map[string]int64{"max_retained": 2})
	pub := s.connectV5(t, "pub")
	for _, topic := range []string{"r/1", "r/2"} {
		if r := pub.pub(t, topic, "v", 1, true); r.ReasonCode != 0 {
			t.Fatalf("retained %s: %#x", topic, r.ReasonCode)
		}
	}
	if r := pub.pub(t, "r/3", "v", 1, true); r.ReasonCode != 0x97 {
		t.Errorf("third retained topic: PUBACK %#x, want 0x97", r.ReasonCode)
	}
	if r := pub.pub(t, "r/1", "new", 1, true); r.ReasonCode != 0 {
		t.Errorf("replacing a retained message: %#x", r.ReasonCode)
	}
	if r := pub.pub(t, "r/2", "", 1, true); r.ReasonCode != 0 {
		t.Errorf("clearing a retained message: %#x", r.ReasonCode)
	}
	if r := pub.pub(t, "r/3", "v", 1, true); r.ReasonCode != 0 {
		t.Errorf("a retained message after one was cleared: %#x", r.ReasonCode)
	}
	s.expectQuotaEvent(t, "pub", "max_retained", 2)
	sub := s.connectV5(t, "sub")
	sub.sub(t, "r/#", 1)
	got := map[string]string{}
	for range 2 {
		m := <-sub.msgs
		got[m.Topic] = string(m.Payload)
	}
	if fmt.Sprint(got) != "map[r/1:new r/3:v]" {
		t.Errorf("retained messages %v", got)
	}
}

func TestQuotaSessionExpiryCapped(t *testing.T) {
	s := newQuotaStack(t)
	s.setQuotas(t, map[string]int64{"max_session_expiry": 60})
	c := mustV5(t, s.addr, "acme/d", s.device("acme", "d"), "d", keepSession) // asks for 3600
	if got := c.connack.Properties.SessionExpiryInterval; got == nil || *got != 60 {
		t.Errorf("CONNACK session expiry %v, want 60", got)
	}
}

// TestQuotaLiveChangeReachesConnection: lowering publish_rate applies to a
// connection opened before the change, without a reconnect.
func TestQuotaLiveChangeReachesConnection(t *testing.T) {
	s := newQuotaStack(t)
	pub := s.connectV5(t, "pub")
	for range 20 {
		pub.pub(t, "x", "fine", 1, false) // within the free plan's 100/s
	}
	s.setQuotas(t, map[string]int64{"publish_rate": 2})
	for range 10 {
		if _, err := pub.Publish(context.Background(), &paho.Publish{Topic: "x", Payload: []byte("too fast")}); err != nil {
			break
		}
	}
	if code := waitDisconnect(t, pub); code != 0x96 {
		t.Errorf("DISCONNECT %#x, want 0x96", code)
	}
}

// TestLifecycleEventTopics: a tenant's own devices can subscribe to its
// $events topics (when its ACL allows); another tenant's never see them,
// and no device can publish there.
func TestLifecycleEventTopics(t *testing.T) {
	s := newQuotaStack(t)
	s.tenant("other")
	for _, tn := range []string{"acme", "other"} {
		s.rules(tn, tenants.DefaultACLRule(), allow(tenants.ActionSubscribe, "$events/#"))
	}
	watch := s.connectV5(t, "watch")
	watch.sub(t, "$events/#", 0)
	// Its own: events are published apart from the connection, so its
	// connect's may come just after its SUBACK (seen under load).
	watch.expectTopicAfter(t, "$events/subscriptions/subscribed/watch", "$events/presence/connected/watch")
	foreign := mustV5(t, s.addr, "other/watch", s.device("other", "watch"), "watch")
	foreign.sub(t, "$events/#", 0)
	foreign.expectTopicAfter(t, "$events/subscriptions/subscribed/watch", "$events/presence/connected/watch")

	d := s.connectV5(t, "d1")
	m := watch.expectTopic(t, "$events/presence/connected/d1")
	var ev events.Event
	if err := json.Unmarshal(m.Payload, &ev); err != nil || ev.Tenant != "acme" || ev.Device != "d1" || ev.Type != events.Connected {
		t.Errorf("event payload %s (%v)", m.Payload, err)
	}
	d.Disconnect(&paho.Disconnect{})
	watch.expectTopic(t, "$events/presence/disconnected/d1")
	s.setQuotas(t, map[string]int64{"max_subscriptions": 0})
	d2 := s.connectV5(t, "d2")
	watch.expectTopic(t, "$events/presence/connected/d2")
	d2.sub(t, "x", 0)
	watch.expectTopic(t, "$events/quota/max_subscriptions/d2")
	foreign.quiet(t, 300*time.Millisecond, "another tenant's events")

	if r := d2.pub(t, "$events/presence/connected/fake", "{}", 1, false); r.ReasonCode != 0x87 {
		t.Errorf("a device published an event: PUBACK %#x, want 0x87", r.ReasonCode)
	}
}

// expectTopic waits for a message on topic, whatever its payload.
// expectTopicAfter is expectTopic, a message on before allowed first.
func (c *v5) expectTopicAfter(t testing.TB, topic, before string) *paho.Publish {
	t.Helper()
	select {
	case m := <-c.msgs:
		if m.Topic == before {
			return c.expectTopic(t, topic)
		}
		if m.Topic != topic {
			t.Fatalf("got a message on %s, want one on %s", m.Topic, topic)
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatalf("no message on %s within 5s", topic)
	}
	return nil
}

func (c *v5) expectTopic(t testing.TB, topic string) *paho.Publish {
	t.Helper()
	select {
	case m := <-c.msgs:
		if m.Topic != topic {
			t.Fatalf("got a message on %s, want one on %s", m.Topic, topic)
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatalf("no message on %s within 5s", topic)
	}
	return nil
}

// TestQuotaMessagesPerMonth: on the free plan publishes past the month's
// allowance are refused (0x97; the API gets a quota error); a paid plan
// goes on and bills the excess.
func TestQuotaMessagesPerMonth(t *testing.T) {
	s := newQuotaStack(t)
	s.setQuotas(t, map[string]int64{"messages_per_month": 5})
	pub := s.connectV5(t, "pub")
	for i := range 5 {
		if r := pub.pub(t, "x", fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("message %d within the allowance: PUBACK %#x", i, r.ReasonCode)
		}
	}
	if r := pub.pub(t, "x", "sixth", 1, false); r.ReasonCode != 0x97 {
		t.Errorf("past the allowance: PUBACK %#x, want 0x97", r.ReasonCode)
	}
	s.expectQuotaEvent(t, "pub", "messages_per_month", 5)
	var qe *tenants.QuotaError
	if err := s.hub.Publish(context.Background(), "acme", dataplane.Message{Topic: "x", Payload: []byte("api")}); !errors.As(err, &qe) || qe.Quota != "messages_per_month" {
		t.Errorf("API publish past the allowance: %v", err)
	}

	plan := tenants.PlanPro
	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Plan: &plan}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the paid plan applies", func() bool {
		return pub.pub(t, "x", "billed", 1, false).ReasonCode == 0
	})
}

// TestQuotaRatePenaltyPushesBack: a 3.1.1 client flooding past its rate is
// read ever more slowly (TCP pushes back on it), so the hub decodes and
// drops only a few of its messages instead of all of them.
func TestQuotaRatePenaltyPushesBack(t *testing.T) {
	s := newQuotaStack(t)
	s.setQuotas(t, map[string]int64{"publish_rate": 10})
	secret := s.device("acme", "flood")
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var pub bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4, TopicName: "f", Payload: []byte("x")}
	if err := pk.PublishEncode(&pub); err != nil {
		t.Fatal(err)
	}
	c.Write(connectBytes(t, 4, "acme/flood", secret, "flood"))
	batch := bytes.Repeat(pub.Bytes(), 1000)
	sent := 0
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, _ := c.Write(batch)
		sent += n / pub.Len()
	}
	throttled := s.hub.Throttled("acme")
	t.Logf("%d messages written in 1.5s, %d decoded and dropped", sent, throttled)
	if throttled == 0 || throttled > 500 {
		t.Errorf("%d messages dropped for the rate: want some, and far fewer than the flood", throttled)
	}
}

// TestQuotaMaxSessions: a device free to choose its client ids (a
// gateway) keeps at most max_sessions sessions in its tenant's broker,
// connected or waiting for their clients; past it a new client id is
// refused with 0x97 (3.1.1: 0x03) and a quota event, while a kept
// session's client still connects, another tenant is not held to it,
// and a raised limit applies live.
func TestQuotaMaxSessions(t *testing.T) {
	s := newQuotaStack(t)
	s.tenant("other")
	s.setQuotas(t, map[string]int64{"max_sessions": 3})
	gw := s.device("acme", "gw", tenants.ClientIDsAny)
	persistent := func(c *paho.Connect) {
		c.CleanStart = false
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(600)}
	}
	for i := range 3 {
		c := mustV5(t, s.addr, "acme/gw", gw, fmt.Sprintf("s%d", i), persistent)
		c.sub(t, fmt.Sprintf("inbox/%d", i), 1)
		c.conn.Close() // its session waits for it
	}
	if code := refusedV5(t, s.addr, "acme/gw", gw, "s3", persistent); code != 0x97 {
		t.Errorf("a fourth session (v5): CONNACK %#x, want 0x97", code)
	}
	if _, code, err := dialV3(t, s.addr, "acme/gw", gw, "s4", true); err == nil || code != 0x03 {
		t.Errorf("a fourth session (3.1.1): code %#x, err %v; want 0x03", code, err)
	}
	s.expectQuotaEvent(t, "gw", "max_sessions", 3)
	back := mustV5(t, s.addr, "acme/gw", gw, "s1", persistent)
	if !back.connack.SessionPresent {
		t.Error("a kept session's client: no session present")
	}
	back.conn.Close()
	otherGW := s.device("other", "gw", tenants.ClientIDsAny)
	for i := range 4 {
		mustV5(t, s.addr, "other/gw", otherGW, fmt.Sprintf("s%d", i), persistent).conn.Close()
	}
	s.setQuotas(t, map[string]int64{"max_sessions": 4})
	mustV5(t, s.addr, "acme/gw", gw, "s3", persistent)
}
