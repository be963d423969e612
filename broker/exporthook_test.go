package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
)

// fakeExporter is Kafka: it takes messages, or refuses them while down.
type fakeExporter struct {
	mu   sync.Mutex
	got  []broker.ExportMessage
	down bool
}

func (f *fakeExporter) Export(_ context.Context, msgs []broker.ExportMessage) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errors.New("kafka down")
	}
	f.got = append(f.got, msgs...)
	return nil
}

func (f *fakeExporter) taken() []broker.ExportMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]broker.ExportMessage(nil), f.got...)
}

// TestExportHook: a device's publish matching its tenant's export rule is
// written to the rule's Kafka topic before it is acknowledged, with the
// device and topic in its headers; another tenant's publish on the same
// topic is not. While Kafka refuses, a v5 QoS 1 publisher gets PUBACK 0x80
// and the message goes nowhere; a QoS 0 one is delivered all the same.
func TestExportHook(t *testing.T) {
	exp := &fakeExporter{}
	s := newStack(t, func(c *broker.Config) { c.Exporter = exp })
	s.tenant("acme")
	s.tenant("other")
	if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "telemetry/#", Topic: "telemetry"}); err != nil {
		t.Fatal(err)
	}
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	sub := mustV5(t, s.addr, "acme/sub", s.device("acme", "sub"), "sub")
	sub.sub(t, "telemetry/#", 1)
	stranger := mustV5(t, s.addr, "other/pub", s.device("other", "pub"), "pub")

	if r := pub.pub(t, "telemetry/temp", "21.5", 1, false); r.ReasonCode != 0 {
		t.Fatalf("PUBACK 0x%02x, want 0", r.ReasonCode)
	}
	got := exp.taken()
	if len(got) != 1 {
		t.Fatalf("exported %d messages before the PUBACK, want 1", len(got))
	}
	m := got[0]
	if m.Topic != tenants.ExportTopic("acme", "telemetry") || string(m.Value) != "21.5" || m.Headers["device"] != "pub" || m.Headers["mqtt_topic"] != "telemetry/temp" {
		t.Errorf("exported %+v", m)
	}
	sub.expect(t, "telemetry/temp", "21.5")
	pub.pub(t, "status/x", "not exported", 1, false)
	stranger.pub(t, "telemetry/temp", "theirs", 1, false)
	if n := len(exp.taken()); n != 1 {
		t.Errorf("%d messages exported; only acme's telemetry should be", n)
	}

	exp.mu.Lock()
	exp.down = true
	exp.mu.Unlock()
	if r := pub.pub(t, "telemetry/temp", "lost?", 1, false); r.ReasonCode != 0x80 {
		t.Errorf("PUBACK 0x%02x while Kafka refuses, want 0x80", r.ReasonCode)
	}
	sub.quiet(t, 200*time.Millisecond, "a message Kafka refused")
	qctx, cancel := contextWithTimeout()
	defer cancel()
	if _, err := pub.Publish(qctx, &paho.Publish{Topic: "telemetry/temp", Payload: []byte("best effort"), QoS: 0}); err != nil {
		t.Fatal(err)
	}
	sub.expect(t, "telemetry/temp", "best effort")
}
