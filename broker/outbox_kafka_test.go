package broker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// tenantKafka is a tenant's own Kafka cluster, in process, with SASL
// SCRAM-SHA-256 (user roost, password kafka-pw) and a topic of 4
// partitions.
type tenantKafka struct {
	*kfake.Cluster
	addrs []string
}

func newTenantKafka(t testing.TB) *tenantKafka {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(2), kfake.SeedTopics(4, "telemetry"), kfake.EnableSASL(),
		kfake.Superuser(tenants.SASLScramSHA256, "roost", "kafka-pw"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &tenantKafka{Cluster: c, addrs: c.ListenAddrs()}
}

// kafkaRecord is a record's value as the test reads it.
type kafkaRecord struct {
	Tenant, Destination, ID, Topic, Device string
	Payload                                json.RawMessage
	key                                    string
	partition                              int32
}

// records reads every record of the topic until it has at least n,
// failing after within.
func (k *tenantKafka) records(t testing.TB, n int, within time.Duration) []kafkaRecord {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.addrs...), kgo.ConsumeTopics("telemetry"),
		kgo.SASL(scram.Auth{User: "roost", Pass: "kafka-pw"}.AsSha256Mechanism()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	c, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var out []kafkaRecord
	for len(out) < n {
		fs := cl.PollFetches(c)
		if c.Err() != nil {
			break
		}
		for _, r := range fs.Records() {
			var v kafkaRecord
			if err := json.Unmarshal(r.Value, &v); err != nil {
				t.Fatalf("record %q: %v", r.Value, err)
			}
			v.key, v.partition = string(r.Key), r.Partition
			out = append(out, v)
		}
	}
	return out
}

// kafkaDestination creates a Kafka destination for k with password, and a
// rule sending it what matches filter; it returns the destination's id.
func (s *outboxStack) kafkaDestination(tenant, name string, k *tenantKafka, password, filter string) string {
	s.t.Helper()
	id := tenants.NewDestinationID()
	in := tenants.DestinationInput{Name: name, Type: tenants.DestinationKafka, Kafka: &tenants.Kafka{Brokers: k.addrs, Topic: "telemetry",
		SASL: &tenants.KafkaSASL{Mechanism: tenants.SASLScramSHA256, Username: "roost", Password: password}}}
	if _, err := s.store.CreateDestination(ctx, tenant, id, in, tenants.Sealed{Password: s.sealer.SealPassword(tenant, id, password)}); err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.store.CreateExportRule(ctx, tenant, tenants.ExportRuleInput{Filter: filter, Destination: name}); err != nil {
		s.t.Fatal(err)
	}
	return id
}

// TestOutboxKafka: QoS 1 publishes of three devices matching a rule with
// a Kafka destination reach the tenant's cluster, one record each, keyed
// by device, every device's in order on one partition; another tenant's
// publishes reach only its own cluster.
func TestOutboxKafka(t *testing.T) {
	s := newOutboxStack(t, time.Minute)
	s.tenant("acme")
	s.tenant("other")
	acmeK, otherK := newTenantKafka(t), newTenantKafka(t)
	dest := s.kafkaDestination("acme", "plant", acmeK, "kafka-pw", "sensors/#")
	s.kafkaDestination("other", "plant", otherK, "kafka-pw", "sensors/#")
	const n = 40
	devices := []string{"d1", "d2", "d3"}
	var wg sync.WaitGroup
	for _, d := range devices {
		pub := mustV5(t, s.addr, "acme/"+d, s.device("acme", d), d)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if r := pub.pub(t, "sensors/"+d, fmt.Sprintf(`{"n":%d}`, i), 1, false); r.ReasonCode != 0 {
					t.Errorf("%s: PUBACK 0x%02x, want 0", d, r.ReasonCode)
					return
				}
			}
		}()
	}
	otherPub := mustV5(t, s.addr, "other/d1", s.device("other", "d1"), "d1")
	otherPub.pub(t, "sensors/d1", `{"other":true}`, 1, false)
	wg.Wait()

	recs := acmeK.records(t, 3*n, 15*time.Second)
	if len(recs) != 3*n {
		t.Fatalf("acme's cluster has %d records, want %d", len(recs), 3*n)
	}
	next, part := map[string]int{}, map[string]int32{}
	for _, r := range recs {
		var p struct{ N int }
		json.Unmarshal(r.Payload, &p)
		if r.Tenant != "acme" || r.Destination != dest || r.key != r.Device || r.Topic != "sensors/"+r.Device || r.ID == "" {
			t.Fatalf("record %+v, want acme's, keyed by its device", r)
		}
		if p.N != next[r.Device] {
			t.Fatalf("device %s: record %d after %d, want in order", r.Device, p.N, next[r.Device]-1)
		}
		next[r.Device]++
		if q, ok := part[r.Device]; ok && q != r.partition {
			t.Errorf("device %s on partitions %d and %d", r.Device, q, r.partition)
		}
		part[r.Device] = r.partition
	}
	if other := otherK.records(t, 1, 10*time.Second); len(other) != 1 || other[0].Tenant != "other" || !strings.Contains(string(other[0].Payload), "other") {
		t.Errorf("other's cluster has %+v, want its one message", other)
	}
	eventually(t, 5*time.Second, "the status counts them delivered", func() bool {
		st, _ := s.hub.DeliveryStatus(ctx, "acme", dest)
		return st.Delivered == 3*n && st.Backlog == 0 && st.LastSuccess != nil
	})
}

// TestOutboxKafkaWrongPassword: with a wrong password the batch is
// retried, not lost: the status names the authentication failure and
// holds the messages; once the password is set right they are delivered,
// in order.
func TestOutboxKafkaWrongPassword(t *testing.T) {
	s := newOutboxStack(t, time.Hour, func(c *broker.Config) { c.Delivery.Sender = shortSender(t, 500*time.Millisecond) })
	s.tenant("acme")
	k := newTenantKafka(t)
	dest := s.kafkaDestination("acme", "plant", k, "wrong", "sensors/#")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	const n = 5
	for i := range n {
		if r := pub.pub(t, "sensors/t", fmt.Sprint(i), 1, false); r.ReasonCode != 0 {
			t.Fatalf("PUBACK 0x%02x, want 0", r.ReasonCode)
		}
	}
	eventually(t, 10*time.Second, "the status shows the authentication failure", func() bool {
		st, _ := s.hub.DeliveryStatus(ctx, "acme", dest)
		return st.LastError != nil && strings.HasPrefix(st.LastErrorText, "auth: ")
	})
	st, _ := s.hub.DeliveryStatus(ctx, "acme", dest)
	if st.Backlog != n || st.Delivered != 0 || st.DeadLetters != 0 {
		t.Errorf("status %+v, want %d waiting, none delivered or dead", st, n)
	}
	if recs := k.records(t, 1, time.Second); len(recs) != 0 {
		t.Fatalf("%d records with a wrong password", len(recs))
	}
	right := tenants.Kafka{Brokers: k.addrs, Topic: "telemetry", SASL: &tenants.KafkaSASL{Mechanism: tenants.SASLScramSHA256, Username: "roost"}}
	if _, err := s.store.UpdateDestination(ctx, "acme", dest, tenants.DestinationUpdate{Kafka: &right,
		SealedPassword: s.sealer.SealPassword("acme", dest, "kafka-pw")}, nil); err != nil {
		t.Fatal(err)
	}
	recs := k.records(t, n, 15*time.Second)
	if len(recs) < n {
		t.Fatalf("%d records once the password is right, want %d", len(recs), n)
	}
	for i, r := range recs[:n] {
		if string(r.Payload) != fmt.Sprint(i) {
			t.Fatalf("record %d: payload %s, want %d", i, r.Payload, i)
		}
	}
	eventually(t, 5*time.Second, "the status counts them delivered", func() bool {
		st, _ := s.hub.DeliveryStatus(ctx, "acme", dest)
		return st.Delivered == n && st.Backlog == 0
	})
}

// TestOutboxKafkaRefusesOwnNetwork: without the operator's allow list,
// the hub does not connect to a tenant's Kafka on its own network (here
// loopback), even when the destination was saved; nothing is produced,
// and the status says why.
func TestOutboxKafkaRefusesOwnNetwork(t *testing.T) {
	strict := func(c *broker.Config) {
		g, err := dataout.NewGuard("", true) // development: plain connections allowed, addresses still checked
		if err != nil {
			t.Fatal(err)
		}
		sender, err := dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: 500 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(sender.Close)
		c.Delivery.Sender = sender
	}
	s := newOutboxStack(t, time.Hour, strict)
	s.tenant("acme")
	k := newTenantKafka(t)
	_, port, _ := strings.Cut(k.addrs[0], ":")
	k.addrs = []string{"localhost:" + port} // a name resolving to loopback
	dest := s.kafkaDestination("acme", "plant", k, "kafka-pw", "sensors/#")
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")
	pub.pub(t, "sensors/t", "1", 1, false)
	eventually(t, 10*time.Second, "the status shows the refused address", func() bool {
		st, _ := s.hub.DeliveryStatus(ctx, "acme", dest)
		return st.LastError != nil && strings.HasPrefix(st.LastErrorText, "refused_address: ")
	})
	if recs := k.records(t, 1, time.Second); len(recs) != 0 {
		t.Errorf("%d records produced to a refused address", len(recs))
	}
	if st, _ := s.hub.DeliveryStatus(ctx, "acme", dest); st.Backlog != 1 {
		t.Errorf("backlog %d, want the message kept", st.Backlog)
	}
}
