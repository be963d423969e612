package events_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/roosthub/roost/events"
)

func TestMemoryKeepsEachTenantsRecent(t *testing.T) {
	m := events.NewMemory(3)
	for i := range 5 {
		m.Emit(events.Event{Tenant: "a", Type: events.Connected, Device: fmt.Sprint(i)})
	}
	m.Emit(events.Event{Tenant: "b", Type: events.AuthFailed})
	got := m.Recent("a")
	if len(got) != 3 || got[0].Device != "2" || got[2].Device != "4" {
		t.Errorf("tenant a: got %+v, want devices 2, 3, 4", got)
	}
	if b := m.Recent("b"); len(b) != 1 || b[0].Type != events.AuthFailed {
		t.Errorf("tenant b: got %+v", b)
	}
	if c := m.Recent("c"); len(c) != 0 {
		t.Errorf("tenant c: got %+v", c)
	}
}

// TestMemoryRingGrowsAsEventsCome: a tenant with a few events holds room for
// a few, not for the whole ring, and its events come back in order as the
// ring fills and wraps.
func TestMemoryRingGrowsAsEventsCome(t *testing.T) {
	m := events.NewMemory(1000)
	heap := func() int64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	before := heap()
	for i := range 100 {
		m.Emit(events.Event{Tenant: fmt.Sprintf("t%d", i), Type: events.Connected})
	}
	if per := (heap() - before) / 100; per > 4096 {
		t.Errorf("a tenant with one event holds %d bytes, want under 4 KiB", per)
	}
	for n := 1; n <= 2500; n++ {
		m.Emit(events.Event{Tenant: "a", Type: events.Connected, Device: fmt.Sprint(n)})
		got := m.Recent("a")
		if want := min(n, 1000); len(got) != want || got[len(got)-1].Device != fmt.Sprint(n) || got[0].Device != fmt.Sprint(n-want+1) {
			t.Fatalf("after %d events: got %d, from %s to %s; want %d, from %d to %d", n, len(got), got[0].Device, got[len(got)-1].Device, want, n-want+1, n)
		}
	}
}

// TestKafkaSink sends events through kfake, an in-process cluster speaking
// the real protocol, and reads them back with a consumer.
func TestKafkaSink(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "roost.events"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	sink, err := events.NewKafka(events.KafkaConfig{Brokers: cluster.ListenAddrs()})
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := range n {
		sink.Emit(events.Event{Time: time.Now(), Tenant: fmt.Sprintf("t%d", i%3), Type: events.Connected, Device: fmt.Sprint(i)})
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if sink.Dropped() != 0 || sink.Failed() != 0 {
		t.Fatalf("dropped %d, failed %d", sink.Dropped(), sink.Failed())
	}
	// Every event arrives, keyed by its tenant, each tenant's in order.
	seen := map[string][]string{}
	count := 0
	for p := range 3 {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: cluster.ListenAddrs(), Topic: "roost.events", Partition: p, MaxWait: 100 * time.Millisecond})
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			m, err := r.ReadMessage(ctx)
			cancel()
			if err != nil {
				break
			}
			var e events.Event
			if err := json.Unmarshal(m.Value, &e); err != nil {
				t.Fatal(err)
			}
			if string(m.Key) != e.Tenant {
				t.Errorf("event of %s keyed %q", e.Tenant, m.Key)
			}
			seen[e.Tenant] = append(seen[e.Tenant], e.Device)
			count++
		}
		r.Close()
	}
	if count != n {
		t.Fatalf("read %d events, want %d", count, n)
	}
	for tenant, devices := range seen {
		for i := 1; i < len(devices); i++ {
			var a, b int
			fmt.Sscan(devices[i-1], &a)
			fmt.Sscan(devices[i], &b)
			if b <= a {
				t.Fatalf("tenant %s's events out of order: %v", tenant, devices)
			}
		}
	}
}

func TestEventTopics(t *testing.T) {
	for _, tc := range []struct {
		e    events.Event
		want string
	}{
		{events.Event{Type: events.Connected, Device: "d"}, "$events/presence/connected/d"},
		{events.Event{Type: events.QuotaExceeded, Device: "d", Quota: "publish_rate"}, "$events/quota/publish_rate/d"},
		{events.Event{Type: events.PublishDenied, Device: "d", MessageTopic: "alarms/x"}, "$events/publish/denied/d"},
		{events.Event{Type: events.PublishDenied}, ""},
		{events.Event{Type: events.PlanChanged, Device: "d"}, "$events/billing/plan_changed"}, // the tenant's, whatever the device
		{events.Event{Type: events.ShadowUpdated, Device: "d"}, ""},
	} {
		if got := tc.e.Topic(); got != tc.want {
			t.Errorf("%s event of %q: topic %q, want %q", tc.e.Type, tc.e.Device, got, tc.want)
		}
	}
}

// TestHasTopic: HasTopic says whether Topic has one, for every type, with
// a device and without.
func TestHasTopic(t *testing.T) {
	for _, typ := range append(events.Types, "made_up") {
		for _, device := range []string{"", "d"} {
			e := events.Event{Type: typ, Device: device, Quota: "publish_rate"}
			if got, want := e.HasTopic(), e.Topic() != ""; got != want {
				t.Errorf("%s event of %q: HasTopic %v, want %v (topic %q)", typ, device, got, want, e.Topic())
			}
		}
	}
}
