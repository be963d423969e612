package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// levels is a topic of n levels under prefix, each level long bytes.
func levels(prefix string, n, long int) string {
	l := make([]string, n)
	l[0] = prefix
	for i := 1; i < n; i++ {
		l[i] = strings.Repeat("x", long)
	}
	return strings.Join(l, "/")
}

// TestTopicLevelsBounded: a topic or filter of more than
// tenants.MaxTopicLevels levels, which would cost mochi's topic tree the
// square of its levels (a second of CPU a PUBLISH, megabytes a
// SUBSCRIBE), is refused with the MQTT reason for it, before the tree
// sees it; one of MaxTopicLevels levels works, also at 64 KiB. Nothing of
// the refused is delivered, retained or subscribed; the connection stays
// where MQTT lets the refusal be told.
func TestTopicLevelsBounded(t *testing.T) {
	s := newDenyStack(t)
	s.tenant("acme")
	liftRates(t, s.stack, "acme")
	deepest := levels("t", tenants.MaxTopicLevels, 1)
	tooDeep := levels("t", tenants.MaxTopicLevels+1, 1)
	widest := levels("w", tenants.MaxTopicLevels, 65000/tenants.MaxTopicLevels)
	spy := mustV5(t, s.addr, user("acme", "spy"), s.device("acme", "spy"), "spy")
	spy.sub(t, "#", 1)

	c := mustV5(t, s.addr, user("acme", "d"), s.device("acme", "d"), "d", func(p *paho.Connect) {
		p.Properties = &paho.ConnectProperties{TopicAliasMaximum: paho.Uint16(4)}
	})
	for _, retain := range []bool{false, true} {
		if r := c.pub(t, tooDeep, "deep", 1, retain); r.ReasonCode != 0x90 {
			t.Errorf("PUBLISH of %d levels (retain %v): PUBACK %#x, want 0x90 Topic Name invalid", tenants.MaxTopicLevels+1, retain, r.ReasonCode)
		}
	}
	s.expectDenial(t, "acme", "d", tooDeep, 1, "topic over 128 levels")
	for _, topic := range []string{deepest, widest} {
		if r := c.pub(t, topic, "ok", 1, false); r.ReasonCode != 0 {
			t.Fatalf("PUBLISH of %d levels, %d bytes: PUBACK %#x, want 0", tenants.MaxTopicLevels, len(topic), r.ReasonCode)
		}
		spy.expect(t, topic, "ok")
	}
	// Through a topic alias: the topic it stands for is what counts.
	pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, topic := range []string{tooDeep, ""} {
		r, err := c.Publish(pctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("alias"),
			Properties: &paho.PublishProperties{TopicAlias: paho.Uint16(1)}})
		if r == nil || r.ReasonCode != 0x90 {
			t.Errorf("PUBLISH of %d levels under an alias (topic %q sent): %v %v, want PUBACK 0x90", tenants.MaxTopicLevels+1, topic, r, err)
		}
	}
	spy.quiet(t, 200*time.Millisecond, "a refused publish")
	if got := c.sub(t, tooDeep, 1); got != 0x8F {
		t.Errorf("SUBSCRIBE of %d levels: SUBACK %#x, want 0x8F Topic Filter invalid", tenants.MaxTopicLevels+1, got)
	}
	if got := c.sub(t, deepest+"/#", 1); got != 0x8F {
		t.Errorf("SUBSCRIBE of %d levels with '#': SUBACK %#x, want 0x8F", tenants.MaxTopicLevels+1, got)
	}
	if got := c.sub(t, levels("+", tenants.MaxTopicLevels, 1), 1); got != 1 {
		t.Errorf("SUBSCRIBE of %d levels: SUBACK %#x, want 1", tenants.MaxTopicLevels, got)
	}
	ua, err := c.Unsubscribe(pctx, &paho.Unsubscribe{Topics: []string{tooDeep}})
	if err != nil || len(ua.Reasons) != 1 || ua.Reasons[0] != 0x11 {
		t.Errorf("UNSUBSCRIBE of %d levels: %v %v, want UNSUBACK 0x11 No subscription existed", tenants.MaxTopicLevels+1, ua, err)
	}
	if !strings.Contains(s.logs.String(), "filter refused: too many levels") {
		t.Error("the refused filter was not logged")
	}
	if n := strings.Count(s.logs.String(), "filter refused: too many levels"); n != 1 {
		t.Errorf("logged %d times for one connection, want once", n)
	}
	// Still connected, and still publishing.
	if r := c.pub(t, "t/after", "after", 1, false); r.ReasonCode != 0 {
		t.Fatalf("after the refusals: PUBACK %#x", r.ReasonCode)
	}
	spy.expect(t, "t/after", "after")

	// Where MQTT has no way to tell it (QoS 0, QoS 2 under mochi, 3.1.1),
	// the connection ends.
	q0 := mustV5(t, s.addr, user("acme", "q0"), s.device("acme", "q0"), "q0")
	q0.pub(t, tooDeep, "deep", 0, false)
	select {
	case d := <-q0.discs:
		if d.ReasonCode != 0x90 {
			t.Errorf("QoS 0 PUBLISH of %d levels: DISCONNECT %#x, want 0x90", tenants.MaxTopicLevels+1, d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Error("QoS 0 PUBLISH of too many levels: no DISCONNECT")
	}
	v3c := mustV3(t, s.addr, user("acme", "v3"), s.device("acme", "v3"), "v3", true)
	v3c.Publish(tooDeep, 1, false, "deep")
	if !v3c.lostWithin(5 * time.Second) {
		t.Error("3.1.1 QoS 1 PUBLISH of too many levels: still connected")
	}
	v3s := mustV3(t, s.addr, user("acme", "v3s"), s.device("acme", "v3s"), "v3s", true)
	tok := v3s.Subscribe(tooDeep, 1, nil)
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatal("3.1.1 SUBSCRIBE: no SUBACK")
	}
	if codes := tok.(interface{ Result() map[string]byte }).Result(); codes[tooDeep] != 0x80 {
		t.Errorf("3.1.1 SUBSCRIBE of too many levels: %v, want 0x80", codes)
	}
	spy.quiet(t, 200*time.Millisecond, "a refused publish")

	// A Will of too many levels refuses the connect; the API refuses
	// such topics and filters too.
	if code := refusedV5(t, s.addr, user("acme", "w"), s.device("acme", "w"), "w", func(p *paho.Connect) {
		p.WillMessage = &paho.WillMessage{Topic: tooDeep, Payload: []byte("gone")}
	}); code != 0x87 {
		t.Errorf("Will of too many levels: CONNACK %#x, want 0x87", code)
	}
	if err := s.hub.Publish(ctx, "acme", dataplane.Message{Topic: tooDeep, Payload: []byte("api")}); err == nil || !strings.Contains(err.Error(), "levels") {
		t.Errorf("API publish of too many levels: %v, want refused for its levels", err)
	}
	if msgs, _, err := s.hub.Retained(ctx, "acme", "#", 0, 100); err != nil || len(msgs) != 0 {
		t.Errorf("retained after the refusals: %v %v, want none", msgs, err)
	}
}

// TestTopicLevelsSharedFilter: a shared subscription's $share/{group}/
// prefix is not among its filter's levels (mochi's topic tree leaves it
// out too): $share/g/ and a filter of tenants.MaxTopicLevels levels is
// granted and gets what is published to such a topic; one of a level more
// is refused. Counted in, the prefix refused shared filters of 127 and
// 128 levels, which an unshared subscription may have.
func TestTopicLevelsSharedFilter(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	liftRates(t, s, "acme")
	deepest := levels("t", tenants.MaxTopicLevels, 1)
	sub := mustV5(t, s.addr, user("acme", "sub"), s.device("acme", "sub"), "sub")
	if got := sub.sub(t, "$share/g/"+deepest, 1); got != 1 {
		t.Fatalf("SUBSCRIBE $share/g/ and %d levels: SUBACK %#x, want 1", tenants.MaxTopicLevels, got)
	}
	if got := sub.sub(t, "$share/g/"+deepest+"/x", 1); got != 0x8F {
		t.Errorf("SUBSCRIBE $share/g/ and %d levels: SUBACK %#x, want 0x8F", tenants.MaxTopicLevels+1, got)
	}
	pub := mustV5(t, s.addr, user("acme", "pub"), s.device("acme", "pub"), "pub")
	pub.pub(t, deepest, "shared", 1, false)
	sub.expect(t, deepest, "shared")
}
