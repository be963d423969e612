package main

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// TestServeExportsToOperatorKafkaDestination: with ROOST_KAFKA_BROKERS
// set, the tenant sees the built-in destination operator-kafka, and a
// rule made with "destination": "operator-kafka" and a topic exports a
// device's MQTT publish to roost.<tenant>.<topic> (on kfake, an in-process
// cluster speaking the real protocol).
func TestServeExportsToOperatorKafkaDestination(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "roost.events", "roost.acme.telemetry"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	h := startServe(t, map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_KAFKA_BROKERS": cluster.ListenAddrs()[0]})
	_, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "k@example.com", "password": "correct horse battery"})
	token := m["token"].(string)
	post(t, h.url+"/v1/tenants", token, map[string]string{"slug": "acme"})
	_, d := post(t, h.url+"/v1/tenants/acme/devices", token, map[string]string{"name": "d1"})

	status, list := get(t, h.url+"/v1/tenants/acme/destinations", token)
	items, _ := list["items"].([]any)
	if status != 200 || len(items) != 1 || items[0].(map[string]any)["id"] != "operator-kafka" {
		t.Fatalf("destinations: %d %v, want operator-kafka", status, list)
	}
	status, rule := post(t, h.url+"/v1/tenants/acme/rules", token, map[string]string{"filter": "sensors/#", "destination": "operator-kafka", "topic": "telemetry"})
	if status != 201 || rule["delivery"] != "operator_kafka" || rule["kafka_topic"] != "roost.acme.telemetry" {
		t.Fatalf("rule: %d %v", status, rule)
	}

	c, err := mqttClient(h.mqtt, "acme/d1", d["secret"].(string), "d1", false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	defer c.Disconnect(&paho.Disconnect{})
	// Not matched: stays out of Kafka.
	if _, err := c.Publish(ctx, &paho.Publish{Topic: "other/x", QoS: 1, Payload: []byte("no")}); err != nil {
		t.Fatal(err)
	}
	// Acknowledged only once Kafka has it.
	if _, err := c.Publish(ctx, &paho.Publish{Topic: "sensors/d1/temp", QoS: 1, Payload: []byte(`{"temp":21}`)}); err != nil {
		t.Fatal(err)
	}

	r := kafka.NewReader(kafka.ReaderConfig{Brokers: cluster.ListenAddrs(), Topic: "roost.acme.telemetry", Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	msg, err := r.ReadMessage(ctx)
	if err != nil {
		t.Fatalf("nothing on roost.acme.telemetry: %v", err)
	}
	headers := map[string]string{}
	for _, hd := range msg.Headers {
		headers[hd.Key] = string(hd.Value)
	}
	if string(msg.Value) != `{"temp":21}` || string(msg.Key) != "d1" || headers["mqtt_topic"] != "sensors/d1/temp" || headers["device"] != "d1" {
		t.Errorf("record: key %q value %q headers %v", msg.Key, msg.Value, headers)
	}
	if n := r.Lag(); n > 0 {
		t.Errorf("%d more records on roost.acme.telemetry, want the one publish", n)
	}
}

// TestServeOperatorKafkaCondition: a rule to operator-kafka with a CEL
// condition exports only the publishes that satisfy it, on kfake: a
// payload below the threshold, one that is not JSON (its condition cannot
// be evaluated) and one on a topic the filter does not match stay out of
// Kafka; the matching ones come in the order they were acknowledged.
func TestServeOperatorKafkaCondition(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "roost.events", "roost.acme.hot"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	h := startServe(t, map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_KAFKA_BROKERS": cluster.ListenAddrs()[0]})
	_, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "k@example.com", "password": "correct horse battery"})
	token := m["token"].(string)
	post(t, h.url+"/v1/tenants", token, map[string]string{"slug": "acme"})
	_, d := post(t, h.url+"/v1/tenants/acme/devices", token, map[string]string{"name": "d1"})

	status, rule := post(t, h.url+"/v1/tenants/acme/rules", token, map[string]string{"filter": "sensors/#", "destination": "operator-kafka",
		"topic": "hot", "condition": `payload.temp > 30 && device == "d1" && topic_levels[1] == "d1"`})
	if status != 201 || rule["condition"] == nil || rule["delivery"] != "operator_kafka" {
		t.Fatalf("rule: %d %v", status, rule)
	}
	c, err := mqttClient(h.mqtt, "acme/d1", d["secret"].(string), "d1", false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	defer c.Disconnect(&paho.Disconnect{})
	for _, p := range []struct{ topic, payload string }{
		{"sensors/d1/temp", `{"temp":21}`},
		{"sensors/d1/temp", `{"temp":35}`},
		{"sensors/d1/temp", `hot`},
		{"sensors/d2/temp", `{"temp":50}`},
		{"other/d1", `{"temp":80}`},
		{"sensors/d1/temp", `{"temp":31}`},
		{"sensors/d1/temp", `{"temp":99,"last":true}`},
	} {
		if _, err := c.Publish(ctx, &paho.Publish{Topic: p.topic, QoS: 1, Payload: []byte(p.payload)}); err != nil {
			t.Fatalf("publish %s %s: %v", p.topic, p.payload, err)
		}
	}
	// Every publish was acknowledged after Kafka had what it exported:
	// anything exported wrongly is before the last one.
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: cluster.ListenAddrs(), Topic: "roost.acme.hot", Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	var got []string
	for len(got) == 0 || got[len(got)-1] != `{"temp":99,"last":true}` {
		msg, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read roost.acme.hot after %q: %v", got, err)
		}
		got = append(got, string(msg.Value))
	}
	if want := []string{`{"temp":35}`, `{"temp":31}`, `{"temp":99,"last":true}`}; !slices.Equal(got, want) {
		t.Errorf("exported %q, want %q", got, want)
	}
}

// TestServeOperatorKafkaEvents: a rule to operator-kafka with a filter
// under $events exports the tenant's events as JSON (on kfake): a device
// connecting and disconnecting puts its connected and disconnected events
// on roost.acme.events for the rule on $events/#; a rule with a condition
// exports only what it lets through; one whose condition nothing meets and
// one on # (a leading wildcard matches no $ topic) export nothing; another
// tenant's events, for a device of the same name, never appear on acme's
// topics, nor acme's on its.
func TestServeOperatorKafkaEvents(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "roost.events",
		"roost.acme.events", "roost.acme.gone", "roost.acme.cold", "roost.acme.all", "roost.other.events"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	h := startServe(t, map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_KAFKA_BROKERS": cluster.ListenAddrs()[0]})
	_, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "k@example.com", "password": "correct horse battery"})
	token := m["token"].(string)
	secrets := map[string]string{}
	for _, tenant := range []string{"acme", "other"} {
		post(t, h.url+"/v1/tenants", token, map[string]string{"slug": tenant})
		_, d := post(t, h.url+"/v1/tenants/"+tenant+"/devices", token, map[string]string{"name": "d1"})
		secrets[tenant] = d["secret"].(string)
	}
	for _, r := range []struct {
		tenant string
		rule   map[string]string
	}{
		{"acme", map[string]string{"filter": "$events/#", "destination": "operator-kafka", "topic": "events"}},
		{"acme", map[string]string{"filter": "$events/presence/#", "destination": "operator-kafka", "topic": "gone", "condition": `payload.type == "disconnected" && device == "d1"`}},
		{"acme", map[string]string{"filter": "$events/presence/#", "destination": "operator-kafka", "topic": "cold", "condition": `payload.type == "disconnected" && device == "d2"`}},
		{"acme", map[string]string{"filter": "#", "destination": "operator-kafka", "topic": "all"}},
		{"other", map[string]string{"filter": "$events/#", "topic": "events"}},
	} {
		status, rule := post(t, h.url+"/v1/tenants/"+r.tenant+"/rules", token, r.rule)
		if status != 201 || rule["delivery"] != "operator_kafka" || rule["destination"] != "operator-kafka" {
			t.Fatalf("rule %v in %s: %d %v", r.rule, r.tenant, status, rule)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connectOnce := func(tenant string) {
		t.Helper()
		c, err := mqttClient(h.mqtt, tenant+"/d1", secrets[tenant], "d1", false, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Disconnect(&paho.Disconnect{})
	}
	type record struct {
		key, topic string
		headers    map[string]string
		event      map[string]any
	}
	// readUntil reads topic from its start until a disconnected event.
	readUntil := func(topic string) []record {
		t.Helper()
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: cluster.ListenAddrs(), Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
		defer r.Close()
		var got []record
		for len(got) == 0 || got[len(got)-1].event["type"] != "disconnected" {
			msg, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatalf("read %s after %v: %v", topic, got, err)
			}
			rec := record{key: string(msg.Key), headers: map[string]string{}}
			for _, hd := range msg.Headers {
				rec.headers[hd.Key] = string(hd.Value)
			}
			if err := json.Unmarshal(msg.Value, &rec.event); err != nil {
				t.Fatalf("%s: record %q is not JSON: %v", topic, msg.Value, err)
			}
			got = append(got, rec)
		}
		return got
	}
	lastOffset := func(topic string) int64 {
		t.Helper()
		conn, err := kafka.DialLeader(ctx, "tcp", cluster.ListenAddrs()[0], topic, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		n, err := conn.ReadLastOffset()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	checkTenant := func(topic, tenant string, got []record) {
		t.Helper()
		for _, rec := range got {
			if rec.event["tenant"] != tenant || rec.event["device"] != "d1" || rec.key != "d1" || rec.headers["device"] != "d1" ||
				rec.headers["mqtt_topic"] != "$events/presence/"+rec.event["type"].(string)+"/d1" || rec.headers["event"] != rec.event["type"] {
				t.Errorf("%s: record key %q headers %v event %v, want %s's d1 on its $events topic", topic, rec.key, rec.headers, rec.event, tenant)
			}
		}
	}

	// The other tenant's device first, until its events are in Kafka, so
	// that everything of its is exported before acme's device connects.
	connectOnce("other")
	other := readUntil("roost.other.events")
	checkTenant("roost.other.events", "other", other)

	connectOnce("acme")
	got := readUntil("roost.acme.events")
	checkTenant("roost.acme.events", "acme", got)
	var types []string
	for _, rec := range got {
		types = append(types, rec.event["type"].(string))
	}
	if !slices.Equal(types, []string{"connected", "disconnected"}) {
		t.Errorf("roost.acme.events: %q, want connected, disconnected", types)
	}
	gone := readUntil("roost.acme.gone")
	checkTenant("roost.acme.gone", "acme", gone)
	if len(gone) != 1 {
		t.Errorf("roost.acme.gone: %d records, want the disconnect alone", len(gone))
	}
	// Each event's records for every rule it matched go in one write: the
	// disconnect is in Kafka, so is everything else it or earlier events
	// would have written.
	for _, topic := range []string{"roost.acme.cold", "roost.acme.all"} {
		if n := lastOffset(topic); n != 0 {
			t.Errorf("%s: %d records, want none", topic, n)
		}
	}
	if n := lastOffset("roost.acme.events"); n != int64(len(got)) {
		t.Errorf("roost.acme.events: %d records, want %d", n, len(got))
	}
	if n := lastOffset("roost.other.events"); n != int64(len(other)) {
		t.Errorf("roost.other.events: %d records, want %d (none of acme's)", n, len(other))
	}
}
