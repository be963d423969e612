package hbase_test

import (
	"context"
	"testing"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/hbase"
	"github.com/roosthub/roost/broker/store/hbase/hbasetest"
	"github.com/roosthub/roost/broker/store/storetest"
)

// TestHBase runs the suite against the in-repo fake of HBase's REST gateway:
// no live HBase can run here.
func TestHBase(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (storetest.Store, func() storetest.Store) {
		fake := hbasetest.New("roost_queues", "roost_meta", "roost_sessions", "roost_retained")
		t.Cleanup(fake.Close)
		open := func() storetest.Store {
			s, err := hbase.New(context.Background(), hbase.Config{URL: fake.URL})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		return open(), open
	})
}

func TestHBaseMissingTable(t *testing.T) {
	fake := hbasetest.New("roost_queues")
	defer fake.Close()
	if _, err := hbase.New(context.Background(), hbase.Config{URL: fake.URL}); err == nil {
		t.Error("New with missing tables: want an error naming the table")
	}
}

func TestHBaseBatches(t *testing.T) {
	fake := hbasetest.New("roost_queues", "roost_meta", "roost_sessions", "roost_retained")
	defer fake.Close()
	s, err := hbase.New(context.Background(), hbase.Config{URL: fake.URL})
	if err != nil {
		t.Fatal(err)
	}
	// A fan-out to 50 sessions is one PUT of queue rows and one of the
	// sequence records, after each queue's first use.
	items := make([]storeItem, 0, 50)
	for i := range 50 {
		items = append(items, storeItem{ClientID: string(rune('a'+i%26)) + string(rune('a'+i/26))})
	}
	if _, err := s.Append(context.Background(), "acme", toItems(items), store.Receipt{}); err != nil {
		t.Fatal(err)
	}
	before := fake.Requests["PUT row"]
	if _, err := s.Append(context.Background(), "acme", toItems(items), store.Receipt{}); err != nil {
		t.Fatal(err)
	}
	if got := fake.Requests["PUT row"] - before; got != 2 {
		t.Errorf("a warm 50-way fan-out took %d PUTs, want 2", got)
	}
}

type storeItem struct{ ClientID string }

func toItems(in []storeItem) []store.Item {
	out := make([]store.Item, len(in))
	for i, it := range in {
		out[i] = store.Item{ClientID: it.ClientID, Message: store.Message{Topic: "t", Payload: []byte("x"), QoS: 1}}
	}
	return out
}
