package broker_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// nextOn waits for the next message on topic, setting aside others (an
// accepted and a delta may come in either order), and decodes it.
func (c *v5) nextOn(t *testing.T, topic string) map[string]any {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-c.msgs:
			if m.Topic != topic {
				continue
			}
			var v map[string]any
			if err := json.Unmarshal(m.Payload, &v); err != nil {
				t.Fatalf("%s: %q is not JSON: %v", topic, m.Payload, err)
			}
			return v
		case <-deadline:
			t.Fatalf("no message on %s within 5s", topic)
		}
	}
}

func (c *v3) nextOn(t *testing.T, topic string) map[string]any {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-c.msgs:
			if m.Topic() != topic {
				continue
			}
			var v map[string]any
			if err := json.Unmarshal(m.Payload(), &v); err != nil {
				t.Fatalf("%s: %q is not JSON: %v", topic, m.Payload(), err)
			}
			return v
		case <-deadline:
			t.Fatalf("no message on %s within 5s", topic)
		}
	}
}

func jsonOf(v any) string { b, _ := json.Marshal(v); return string(b) }

// TestShadowMQTT: a device's shadow over MQTT 5 and 3.1.1 — update and
// its accepted answer, rejections (bad JSON, over max_shadow_bytes), the
// delta after a desired change through the directory (as the API makes
// it), get; another device of the tenant cannot touch it, another
// tenant's device of the same name has its own, and $roost stays
// reserved otherwise.
func TestShadowMQTT(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.tenant("other")
	p1, p2, p3 := s.device("acme", "d1"), s.device("acme", "d2"), s.device("acme", "d3")
	po := s.device("other", "d1")
	s.setQuota("acme", "max_shadow_bytes", 200)

	d1 := mustV5(t, s.addr, user("acme", "d1"), p1, "d1")
	for _, f := range []string{"$roost/shadow/d1/update/accepted", "$roost/shadow/d1/update/rejected", "$roost/shadow/d1/update/delta", "$roost/shadow/d1/get/+"} {
		if code := d1.sub(t, f, 1); code >= 0x80 {
			t.Fatalf("d1 subscribe %s: 0x%x, want granted", f, code)
		}
	}
	if r := d1.pub(t, "$roost/shadow/d1/update", `{"state":{"reported":{"temp":21,"led":"off"}}}`, 1, false); r.ReasonCode >= 0x80 {
		t.Fatalf("d1 update: PUBACK 0x%x, want success", r.ReasonCode)
	}
	acc := d1.nextOn(t, "$roost/shadow/d1/update/accepted")
	if jsonOf(acc["state"].(map[string]any)["reported"]) != `{"led":"off","temp":21}` || acc["version"] != float64(1) {
		t.Errorf("update/accepted = %s, want reported {led off, temp 21}, version 1", jsonOf(acc))
	}

	// Bad JSON and an oversized shadow are rejected with a code.
	d1.pub(t, "$roost/shadow/d1/update", `{"state":`, 1, false)
	if rej := d1.nextOn(t, "$roost/shadow/d1/update/rejected"); rej["code"] != float64(400) || rej["message"] == "" {
		t.Errorf("bad JSON: rejected %s, want code 400 and a message", jsonOf(rej))
	}
	d1.pub(t, "$roost/shadow/d1/update", `{"state":{"reported":{"blob":"`+strings.Repeat("x", 300)+`"}}}`, 1, false)
	if rej := d1.nextOn(t, "$roost/shadow/d1/update/rejected"); rej["code"] != float64(413) || rej["quota"] != "max_shadow_bytes" {
		t.Errorf("oversized: rejected %s, want code 413 naming max_shadow_bytes", jsonOf(rej))
	}
	d1.pub(t, "$roost/shadow/d1/update", `{"state":{"reported":{"led":"on"}},"version":0}`, 1, false)
	if rej := d1.nextOn(t, "$roost/shadow/d1/update/rejected"); rej["code"] != float64(409) {
		t.Errorf("stale version: rejected %s, want code 409", jsonOf(rej))
	}

	// The other tenant's d1 listens to its own delta.
	od1 := mustV5(t, s.addr, user("other", "d1"), po, "d1")
	od1.sub(t, "$roost/shadow/d1/update/delta", 1)

	// An application sets desired, as PATCH …/shadow does: d1 is told.
	u, err := tenants.ParseShadowUpdate([]byte(`{"state":{"desired":{"led":"on","temp":21}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.UpdateShadow(ctx, "acme", "d1", u); err != nil {
		t.Fatal(err)
	}
	delta := d1.nextOn(t, "$roost/shadow/d1/update/delta")
	if jsonOf(delta["state"]) != `{"led":"on"}` || delta["version"] != float64(2) {
		t.Errorf("delta = %s, want state {led on}, version 2", jsonOf(delta))
	}
	od1.quiet(t, 300*time.Millisecond, "the other tenant's d1 after acme's d1 changed")

	// get.
	d1.pub(t, "$roost/shadow/d1/get", ``, 1, false)
	if got := d1.nextOn(t, "$roost/shadow/d1/get/accepted"); got["version"] != float64(2) || jsonOf(got["state"].(map[string]any)["delta"]) != `{"led":"on"}` {
		t.Errorf("get/accepted = %s, want version 2, delta {led on}", jsonOf(got))
	}

	// d3 (MQTT 5) may neither read nor write d1's shadow, nor publish
	// elsewhere under $roost; nor may d1 forge its own answers.
	d3 := mustV5(t, s.addr, user("acme", "d3"), p3, "d3")
	if code := d3.sub(t, "$roost/shadow/d1/update/delta", 1); code < 0x80 {
		t.Errorf("d3 subscribe to d1's delta: 0x%x, want refused", code)
	}
	if code := d3.sub(t, "$roost/shadow/+/update/delta", 1); code < 0x80 {
		t.Errorf("d3 subscribe to every delta: 0x%x, want refused", code)
	}
	if r := d3.pub(t, "$roost/shadow/d1/update", `{"state":{"reported":{"led":"hacked"}}}`, 1, false); r.ReasonCode != 0x87 {
		t.Errorf("d3 update of d1's shadow: PUBACK 0x%x, want 0x87", r.ReasonCode)
	}
	for _, topic := range []string{"$roost/shadow/d1/update/accepted", "$roost/shadow/d1/update/delta", "$roost/other"} {
		if r := d1.pub(t, topic, `{}`, 1, false); r.ReasonCode != 0x87 {
			t.Errorf("d1 publish to %s: PUBACK 0x%x, want 0x87", topic, r.ReasonCode)
		}
	}
	if sh, err := s.store.Shadow(ctx, "acme", "d1"); err != nil || sh.Version != 2 {
		t.Errorf("d1's shadow after the others tried: version %d, %v; want 2", sh.Version, err)
	}

	// A 3.1.1 device, its own shadow.
	d2 := mustV3(t, s.addr, user("acme", "d2"), p2, "d2", true)
	d2.sub(t, "$roost/shadow/d2/#", 1)
	d2.pub(t, "$roost/shadow/d2/update", `{"state":{"reported":{"fw":"1.2"}}}`, 1, false)
	if acc := d2.nextOn(t, "$roost/shadow/d2/update/accepted"); acc["version"] != float64(1) {
		t.Errorf("3.1.1 update/accepted = %s, want version 1", jsonOf(acc))
	}
	d2.pub(t, "$roost/shadow/d2/update", `[1,2]`, 1, false)
	if rej := d2.nextOn(t, "$roost/shadow/d2/update/rejected"); rej["code"] != float64(400) {
		t.Errorf("3.1.1 bad update: rejected %s, want code 400", jsonOf(rej))
	}
	if code := d2.subCode(t, "$roost/shadow/d1/update/delta", 1); code < 0x80 {
		t.Errorf("3.1.1 d2 subscribe to d1's delta: 0x%x, want 0x80", code)
	}
}

// TestShadowGrantedByRule: a rule may give another device (an app, a
// gateway) a device's shadow topics.
func TestShadowGrantedByRule(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.device("acme", "d1")
	pg := s.device("acme", "gw")
	s.rules("acme", allow(tenants.ActionAll, "$roost/shadow/d1/#"))
	gw := mustV5(t, s.addr, user("acme", "gw"), pg, "gw")
	if code := gw.sub(t, "$roost/shadow/d1/update/accepted", 1); code >= 0x80 {
		t.Fatalf("gw subscribe under a rule: 0x%x, want granted", code)
	}
	if r := gw.pub(t, "$roost/shadow/d1/update", `{"state":{"reported":{"via":"gw"}}}`, 1, false); r.ReasonCode >= 0x80 {
		t.Fatalf("gw update under a rule: PUBACK 0x%x, want success", r.ReasonCode)
	}
	if acc := gw.nextOn(t, "$roost/shadow/d1/update/accepted"); jsonOf(acc["state"].(map[string]any)["reported"]) != `{"via":"gw"}` {
		t.Errorf("accepted = %s, want reported {via gw}", jsonOf(acc))
	}
}
