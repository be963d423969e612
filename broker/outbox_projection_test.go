package broker_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// TestOutboxProjection: a rule's projection shapes what its destination
// is sent (and what its outbox keeps), per destination: one rule's
// projection goes to its webhook, another's plain payload to its own; a
// message the projection cannot be evaluated for is not sent by that
// rule, and the publisher is acknowledged all the same. Another tenant's
// rule on the same topic sends its own tenant's messages unshaped.
func TestOutboxProjection(t *testing.T) {
	s := newOutboxStack(t, time.Minute)
	s.tenant("acme")
	s.tenant("other")
	shapedRC, plainRC, otherRC := newWebhookReceiver(t), newWebhookReceiver(t), newWebhookReceiver(t)
	shaped := s.destination("acme", "shaped", shapedRC, "sensors/#", "")
	s.destination("acme", "plain", plainRC, "sensors/#", "")
	s.destination("other", "hook", otherRC, "sensors/#", "")
	// A second rule to the shaped destination, with the projection: the
	// destination takes each message once, by its first matching rule,
	// so the plain rule above is deleted first.
	rules, err := s.store.Rules(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if r.Destination == shaped {
			if err := s.store.DeleteExportRule(ctx, "acme", r.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.store.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "sensors/#", Destination: "shaped",
		Projection: `{"celsius": payload.temp, "fahrenheit": payload.temp * 9.0 / 5.0 + 32.0, "room": metadata.room, "site": topic_levels[1]}`}); err != nil {
		t.Fatal(err)
	}
	_, secret, err := s.store.CreateDevice(ctx, "acme", tenants.DeviceInput{Name: "pub", Metadata: map[string]string{"room": "lab"}})
	if err != nil {
		t.Fatal(err)
	}
	pub := mustV5(t, s.addr, "acme/pub", secret, "pub")
	otherPub := mustV5(t, s.addr, "other/pub", s.device("other", "pub"), "pub")
	const n = 20
	for i := range n {
		if r := pub.pub(t, "sensors/north/temp", fmt.Sprintf(`{"temp":%d,"raw":"r%d"}`, 10+i, i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("PUBACK 0x%02x, want 0", r.ReasonCode)
		}
		otherPub.pub(t, "sensors/north/temp", fmt.Sprintf(`{"temp":%d}`, i), 1, false)
	}
	// No temp: the projection cannot be evaluated; the plain rule still sends it.
	if r := pub.pub(t, "sensors/north/temp", `{"humidity":40}`, 1, false); r.ReasonCode != 0 {
		t.Fatalf("PUBACK 0x%02x for a message the projection cannot shape, want 0", r.ReasonCode)
	}
	eventually(t, 10*time.Second, "every receiver has its messages", func() bool {
		return len(shapedRC.messages()) >= n && len(plainRC.messages()) >= n+1 && len(otherRC.messages()) >= n
	})
	time.Sleep(200 * time.Millisecond) // anything more would have come by now
	got := shapedRC.messages()
	if len(got) != n {
		t.Fatalf("the shaped destination took %d messages, want %d", len(got), n)
	}
	for i, m := range got {
		want := fmt.Sprintf(`{"celsius":%d,"fahrenheit":%g,"room":"lab","site":"north"}`, 10+i, float64(10+i)*9/5+32)
		if string(m.Payload) != want || m.Encoding != "json" || m.Topic != "sensors/north/temp" || m.Device != "pub" {
			t.Errorf("shaped message %d: %s (%s), want %s", i, m.Payload, m.Encoding, want)
		}
	}
	plain := plainRC.messages()
	for i, m := range plain[:n] {
		if want := fmt.Sprintf(`{"temp":%d,"raw":"r%d"}`, 10+i, i); string(m.Payload) != want {
			t.Errorf("plain message %d: %s, want %s", i, m.Payload, want)
		}
	}
	if last := plain[len(plain)-1]; string(last.Payload) != `{"humidity":40}` {
		t.Errorf("the plain destination's last message: %s, want the one without temp", last.Payload)
	}
	for i, m := range otherRC.messages() {
		if want := fmt.Sprintf(`{"temp":%d}`, i); string(m.Payload) != want {
			t.Errorf("other's message %d: %s, want %s unshaped", i, m.Payload, want)
		}
	}
}
