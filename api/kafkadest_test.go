package api_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// TestKafkaDestination walks a Kafka destination's life on an in-process
// cluster with SASL SCRAM-SHA-512: made without a signing secret, its
// password never shown (nor its user name to viewers), a send test that
// produces a record, a wrong password reported as an auth failure, a
// PATCH that keeps the sealed password, no secret to rotate.
func TestKafkaDestination(t *testing.T) {
	c, err := kfake.NewCluster(kfake.SeedTopics(2, "telemetry"), kfake.EnableSASL(),
		kfake.Superuser(tenants.SASLScramSHA512, "roost", "kafka-pw-123"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	e := newEnvWith(t, allowLoopback(t))
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	_, viewerKey := e.mustKey(owner.token, "acme", tenants.RoleViewer)
	base := "/v1/tenants/acme/destinations"
	settings := func(password string) map[string]any {
		sasl := map[string]any{"mechanism": "SCRAM-SHA-512", "username": "roost"}
		if password != "" {
			sasl["password"] = password
		}
		return map[string]any{"brokers": c.ListenAddrs(), "topic": "telemetry", "sasl": sasl}
	}

	r := e.do("POST", base, owner.token, map[string]any{"name": "plant", "type": "kafka", "kafka": settings("kafka-pw-123")})
	want(t, r, 201, "create a Kafka destination")
	id := r.str("id")
	if r.str("secret") != "" || r.str("url") != "" || strings.Contains(string(r.body), "kafka-pw-123") {
		t.Errorf("created: %s; want no secret, no url, no password", r.body)
	}
	stored, err := e.store.Destination(context.Background(), "acme", id)
	if err != nil || stored.Sealed.Password == "" || strings.Contains(stored.Sealed.Password, "kafka-pw-123") || stored.Kafka.SASL.Password != "" {
		t.Errorf("stored: %+v %+v, %v; want the password sealed only", stored.Sealed, stored.Kafka, err)
	}
	e.bodies = &testenv.Buffer{}

	if got := e.do("GET", base+"/"+id, owner.token, nil).json()["kafka"].(map[string]any)["sasl"].(map[string]any)["username"]; got != "roost" {
		t.Errorf("the owner sees user %v, want roost", got)
	}
	v := e.do("GET", base+"/"+id, viewerKey, nil)
	want(t, v, 200, "a viewer reads it")
	if k := v.json()["kafka"].(map[string]any); k["topic"] != "telemetry" || strings.Contains(string(v.body), `"roost"`) {
		t.Errorf("a viewer sees %s; want the topic, not the user name", v.body)
	}
	wantProblem(t, e.do("POST", base+"/"+id+"/test", viewerKey, nil), 403, "forbidden", "", "a viewer sends a test")
	wantProblem(t, e.do("PATCH", base+"/"+id, viewerKey, map[string]any{"kafka": settings("x")}), 403, "forbidden", "", "a viewer changes it")

	// The send test produces one sample record.
	r = e.do("POST", base+"/"+id+"/test", owner.token, nil)
	want(t, r, 200, "send test")
	if m := r.json(); m["delivered"] != true || m["error"] != nil || m["sent"].(map[string]any)["destination"] != id {
		t.Errorf("send test: %s", r.body)
	}
	recs := consumeAPI(t, c.ListenAddrs(), 1)
	var rec map[string]any
	json.Unmarshal(recs[0].Value, &rec)
	if rec["topic"] != "$roost/test" || rec["tenant"] != "acme" {
		t.Errorf("the record: %s", recs[0].Value)
	}

	// A wrong password: the test says why.
	want(t, e.do("PATCH", base+"/"+id, owner.token, map[string]any{"kafka": settings("wrong")}), 200, "set a wrong password")
	r = e.do("POST", base+"/"+id+"/test", owner.token, nil)
	if m := r.json(); m["delivered"] != false || m["error"] == nil || m["error"].(map[string]any)["kind"] != "auth" {
		t.Errorf("send test with a wrong password: %s", r.body)
	}
	// The right one again, then a PATCH without a password keeps it.
	want(t, e.do("PATCH", base+"/"+id, owner.token, map[string]any{"kafka": settings("kafka-pw-123")}), 200, "set the password")
	want(t, e.do("PATCH", base+"/"+id, owner.token, map[string]any{"name": "plant-2", "kafka": settings("")}), 200, "change without the password")
	// Pointed elsewhere, it must be given again: else an admin could send
	// it to a broker of theirs and read it.
	elsewhere := settings("")
	elsewhere["brokers"] = []string{"127.0.0.1:1"}
	wantProblem(t, e.do("PATCH", base+"/"+id, owner.token, map[string]any{"kafka": elsewhere}), 400, "invalid", "kafka.sasl.password", "other brokers without the password")
	if r := e.do("POST", base+"/"+id+"/test", owner.token, nil); r.json()["delivered"] != true {
		t.Errorf("send test after a PATCH without password: %s", r.body)
	}

	wantProblem(t, e.do("POST", base+"/"+id+"/secret", owner.token, nil), 409, "conflict", "", "rotate a Kafka destination's secret")
	wantProblem(t, e.do("PATCH", base+"/"+id, owner.token, map[string]any{"url": "https://a.example.com"}), 400, "invalid", "url", "a url for Kafka")

	// A rule sends to it by name.
	rule := e.do("POST", "/v1/tenants/acme/rules", owner.token, map[string]string{"filter": "sensors/#", "destination": "plant-2"})
	want(t, rule, 201, "a rule to the Kafka destination")
	if rule.str("destination") != id {
		t.Errorf("rule: %s", rule.body)
	}

	for _, s := range []string{"kafka-pw-123", "wrong"} {
		if strings.Contains(e.bodies.String(), `"`+s+`"`) && s != "wrong" {
			t.Errorf("%q appeared in a later response", s)
		}
		if strings.Contains(e.logs.String(), s) {
			t.Errorf("%q appeared in the log", s)
		}
	}
}

// TestKafkaDestinationInput: bad settings are refused with the field
// named; the hub's own network is refused without the allow list.
func TestKafkaDestinationInput(t *testing.T) {
	e := newEnv(t) // no allow list
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	base := "/v1/tenants/acme/destinations"
	ok := func() map[string]any {
		return map[string]any{"brokers": []string{"kafka.example.com:9093"}, "topic": "t", "tls": true}
	}
	for _, tc := range []struct {
		name, field string
		change      func(k map[string]any)
	}{
		{"no brokers", "kafka.brokers", func(k map[string]any) { k["brokers"] = []string{} }},
		{"no port", "kafka.brokers", func(k map[string]any) { k["brokers"] = []string{"kafka.example.com"} }},
		{"loopback", "kafka.brokers", func(k map[string]any) { k["brokers"] = []string{"127.0.0.1:9093"} }},
		{"metadata service", "kafka.brokers", func(k map[string]any) { k["brokers"] = []string{"169.254.169.254:9093"} }},
		{"private", "kafka.brokers", func(k map[string]any) { k["brokers"] = []string{"kafka.example.com:9093", "10.1.2.3:9093"} }},
		{"plain", "kafka.brokers", func(k map[string]any) { k["tls"] = false }},
		{"bad topic", "kafka.topic", func(k map[string]any) { k["topic"] = "a/b" }},
		{"bad CA", "kafka.ca", func(k map[string]any) { k["ca"] = "not pem" }},
		{"unknown mechanism", "kafka.sasl.mechanism", func(k map[string]any) {
			k["sasl"] = map[string]any{"mechanism": "GSSAPI", "username": "u", "password": "p"}
		}},
		{"no password", "kafka.sasl.password", func(k map[string]any) { k["sasl"] = map[string]any{"mechanism": "PLAIN", "username": "u"} }},
	} {
		k := ok()
		tc.change(k)
		wantProblem(t, e.do("POST", base, owner.token, map[string]any{"name": "k", "type": "kafka", "kafka": k}), 400, "invalid", tc.field, tc.name)
	}
	wantProblem(t, e.do("POST", base, owner.token, map[string]any{"name": "k", "type": "kafka"}), 400, "invalid", "kafka", "no settings")
	wantProblem(t, e.do("POST", base, owner.token, map[string]any{"name": "k", "type": "webhook", "url": "https://a.example.com", "kafka": ok()}), 400, "invalid", "kafka", "kafka settings on a webhook")
	want(t, e.do("POST", base, owner.token, map[string]any{"name": "k", "type": "kafka", "kafka": ok()}), 201, "valid settings")
}

// consumeAPI reads n records of the telemetry topic as the superuser.
func consumeAPI(t *testing.T, addrs []string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics("telemetry"),
		kgo.SASL(scram.Auth{User: "roost", Pass: "kafka-pw-123"}.AsSha512Mechanism()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d records in 10 s, want %d", len(out), n)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

// TestKafkaDestinationRefusesHubOwn: the hub's own Kafka brokers
// (ROOST_KAFKA_BROKERS), though on an allowed address, and its roost.*
// topics are refused at create and update with a 400 naming the field;
// the same address on another port is a tenant's.
func TestKafkaDestinationRefusesHubOwn(t *testing.T) {
	const own = "127.0.0.1:19092"
	e := newEnvWith(t, func(cfg *api.Config) {
		g, err := dataout.NewGuard("127.0.0.1,localhost", false)
		if err != nil {
			t.Fatal(err)
		}
		g.DenyKafkaBrokers([]string{own})
		s, err := dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Webhooks = s
	})
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	base := "/v1/tenants/acme/destinations"
	kafka := func(brokers []string, topic string) map[string]any {
		return map[string]any{"name": "k", "type": "kafka", "kafka": map[string]any{"brokers": brokers, "topic": topic}}
	}
	for _, tc := range []struct {
		name, field string
		body        map[string]any
	}{
		{"the hub's own broker", "kafka.brokers", kafka([]string{own}, "t")},
		{"the hub's own broker among others", "kafka.brokers", kafka([]string{"127.0.0.1:19093", own}, "t")},
		{"a name resolving to the hub's own broker", "kafka.brokers", kafka([]string{"localhost:19092"}, "t")},
		{"the hub's events topic", "kafka.topic", kafka([]string{"127.0.0.1:19093"}, "roost.events")},
		{"the hub's fabric topic in other case", "kafka.topic", kafka([]string{"127.0.0.1:19093"}, "Roost.Fabric")},
		{"an operator export topic", "kafka.topic", kafka([]string{"127.0.0.1:19093"}, "roost.acme.telemetry")},
	} {
		wantProblem(t, e.do("POST", base, owner.token, tc.body), 400, "invalid", tc.field, tc.name)
	}
	r := e.do("POST", base, owner.token, kafka([]string{"127.0.0.1:19093"}, "roost-events"))
	want(t, r, 201, "the same address on another port, a topic not reserved")
	id := r.str("id")
	for _, tc := range []struct {
		name, field string
		kafka       map[string]any
	}{
		{"PATCH to the hub's own broker", "kafka.brokers", map[string]any{"brokers": []string{own}, "topic": "t"}},
		{"PATCH to a name resolving to it", "kafka.brokers", map[string]any{"brokers": []string{"localhost:19092"}, "topic": "t"}},
		{"PATCH to a roost. topic", "kafka.topic", map[string]any{"brokers": []string{"127.0.0.1:19093"}, "topic": "roost.events"}},
	} {
		wantProblem(t, e.do("PATCH", base+"/"+id, owner.token, map[string]any{"kafka": tc.kafka}), 400, "invalid", tc.field, tc.name)
	}
	if got := e.do("GET", base+"/"+id, owner.token, nil).json()["kafka"].(map[string]any); got["topic"] != "roost-events" {
		t.Errorf("after refused PATCHes the destination is %v, want unchanged", got)
	}
}
