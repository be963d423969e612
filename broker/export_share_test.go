package broker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/kafkaexport"
	"github.com/roosthub/roost/tenants"
)

// gatedExporter is the operator's Kafka (kafkaexport on kfake) behind a
// gate: its first write waits until the gate opens, holding the hub's
// event writer there, so that the events queued meanwhile stay queued.
type gatedExporter struct {
	next    broker.Exporter
	entered chan struct{}
	gate    chan struct{}
	once    sync.Once
}

func (g *gatedExporter) Export(ctx context.Context, msgs []broker.ExportMessage) error {
	g.once.Do(func() {
		close(g.entered)
		<-g.gate
	})
	return g.next.Export(ctx, msgs)
}

// TestExportEventsShare: one tenant's share of the queue of events for the
// operator's Kafka is bounded (512): with the event writer held up, acme
// raising 5,000 billing events (more than the whole queue holds) has 512
// queued and the rest dropped, counted in its rule's errors alone; an
// event of another tenant's raised after the flood is still queued, and
// reaches Kafka (kfake) once the writer goes on, as do acme's 513 that
// were taken.
func TestExportEventsShare(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "roost.acme.billing", "roost.other.billing"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	kx, err := kafkaexport.New(cluster.ListenAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer kx.Close()
	exp := &gatedExporter{next: kx, entered: make(chan struct{}), gate: make(chan struct{})}
	opened := false
	open := func() {
		if !opened {
			opened = true
			close(exp.gate)
		}
	}
	defer open()
	s := newStack(t, func(c *broker.Config) { c.Exporter = exp })
	rule := map[string]string{}
	for _, tenant := range []string{"acme", "other"} {
		s.tenant(tenant)
		r, err := s.store.CreateExportRule(ctx, tenant, tenants.ExportRuleInput{Filter: "$events/billing/#", Topic: "billing"})
		if err != nil {
			t.Fatal(err)
		}
		rule[tenant] = r.ID
	}
	publish := func(tenant, typ string) {
		t.Helper()
		if err := s.hub.PublishEvent(ctx, events.Event{Tenant: tenant, Type: typ}); err != nil {
			t.Fatal(err)
		}
	}
	// The writer takes acme's first event and waits at the gate.
	publish("acme", events.PlanChanged)
	select {
	case <-exp.entered:
	case <-time.After(20 * time.Second):
		t.Fatal("the event writer did not take acme's first event within 20s")
	}
	const flood, share = 5000, 512
	for range flood {
		publish("acme", events.PaymentFailed)
	}
	publish("other", events.PlanChanged)
	// Queued or dropped as each was raised: the counts are already final.
	if got := s.hub.ExportErrors("acme")[rule["acme"]]; got != flood-share {
		t.Errorf("acme's rule counts %d events dropped, want %d (its share is %d)", got, flood-share, share)
	}
	if got := s.hub.ExportErrors("other")[rule["other"]]; got != 0 {
		t.Errorf("other's rule counts %d events dropped, want none", got)
	}
	open()

	// Kafka gets other's event, and acme's first and the 512 queued.
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	count := func(topic string, want int) {
		t.Helper()
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: cluster.ListenAddrs(), Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
		defer r.Close()
		for n := 0; n < want; n++ {
			if _, err := r.ReadMessage(rctx); err != nil {
				t.Fatalf("%s: %d records of %d, then %v", topic, n, want, err)
			}
		}
		conn, err := kafka.DialLeader(rctx, "tcp", cluster.ListenAddrs()[0], topic, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if last, err := conn.ReadLastOffset(); err != nil || last != int64(want) {
			t.Errorf("%s holds %d records (%v), want %d", topic, last, err, want)
		}
	}
	count("roost.other.billing", 1)
	count("roost.acme.billing", 1+share)
	if got := s.hub.ExportErrors("other")[rule["other"]]; got != 0 {
		t.Errorf("other's rule counts %d events dropped after the writes, want none", got)
	}
}
