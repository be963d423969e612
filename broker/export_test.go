package broker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/kafkaexport"
	"github.com/roosthub/roost/tenants"
)

// readTopic reads everything in a Kafka topic's first partition.
func readTopic(t *testing.T, brokers []string, topic string) []kafka.Message {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	var out []kafka.Message
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		m, err := r.ReadMessage(ctx)
		cancel()
		if err != nil {
			return out
		}
		out = append(out, m)
	}
}

// TestExportRules: every message on a matching topic reaches the tenant's
// Kafka topic, keyed by device, each device's in order; nothing else does,
// and no tenant writes into another's topic. When Kafka is gone, QoS 1
// publishers are not acknowledged and the rule counts the errors.
func TestExportRules(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(1))
	if err != nil {
		t.Fatal(err)
	}
	exp, err := kafkaexport.New(cluster.ListenAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer exp.Close()
	s := newStack(t, func(c *broker.Config) { c.Exporter = exp })
	for _, tn := range []string{"acme", "beta"} {
		s.tenant(tn)
		if _, err := s.store.CreateExportRule(ctx, tn, tenants.ExportRuleInput{Filter: "sensors/#", Topic: "telemetry"}); err != nil {
			t.Fatal(err)
		}
	}
	d1 := mustV5(t, s.addr, "acme/d1", s.device("acme", "d1"), "d1")
	d2 := mustV3(t, s.addr, "acme/d2", s.device("acme", "d2"), "d2", true)
	beta := mustV5(t, s.addr, "beta/d1", s.device("beta", "d1"), "d1")
	const n = 20
	for i := range n {
		d1.pub(t, "sensors/temp", fmt.Sprintf("d1-%d", i), 1, false)
		d2.pub(t, "sensors/hum", fmt.Sprintf("d2-%d", i), 1, false)
	}
	d1.pub(t, "other/x", "not exported", 1, false)
	beta.pub(t, "sensors/temp", "beta", 1, false)
	if err := s.hub.Publish(context.Background(), "acme", broker.Message{Topic: "sensors/api", Payload: []byte("from the api"), QoS: 1}); err != nil {
		t.Fatal(err)
	}

	msgs := readTopic(t, cluster.ListenAddrs(), "roost.acme.telemetry")
	next := map[string]int{}
	for _, m := range msgs {
		key, payload := string(m.Key), string(m.Value)
		switch {
		case key == "api" && payload == "from the api":
		case key == "d1" || key == "d2":
			if want := fmt.Sprintf("%s-%d", key, next[key]); payload != want {
				t.Errorf("device %s: got %q, want %q (in order, each once)", key, payload, want)
			}
			next[key]++
		default:
			t.Errorf("unexpected message %q keyed %q", payload, key)
		}
		var topic string
		for _, h := range m.Headers {
			if h.Key == "mqtt_topic" {
				topic = string(h.Value)
			}
		}
		if topic == "" || topic == "other/x" {
			t.Errorf("message %q has MQTT topic header %q", payload, topic)
		}
	}
	if next["d1"] != n || next["d2"] != n || len(msgs) != 2*n+1 {
		t.Errorf("exported %d messages (d1 %d, d2 %d), want %d", len(msgs), next["d1"], next["d2"], 2*n+1)
	}
	if b := readTopic(t, cluster.ListenAddrs(), "roost.beta.telemetry"); len(b) != 1 || string(b[0].Value) != "beta" {
		t.Errorf("beta's topic holds %d messages, want only its own one", len(b))
	}

	// Kafka goes away: a QoS 1 publish that matches a rule is not
	// acknowledged, and the rule counts it.
	cluster.Close()
	if r := d1.pub(t, "sensors/temp", "kafka down", 1, false); r.ReasonCode < 0x80 {
		t.Errorf("PUBACK 0x%02x with Kafka down, want an error code", r.ReasonCode)
	}
	errs := s.hub.ExportErrors("acme")
	total := int64(0)
	for _, v := range errs {
		total += v
	}
	if total == 0 {
		t.Error("no export error counted")
	}
	// Messages that match no rule are unaffected.
	if r := d1.pub(t, "other/x", "fine", 1, false); r.ReasonCode >= 0x80 {
		t.Errorf("a publish matching no rule was refused: 0x%02x", r.ReasonCode)
	}
}
