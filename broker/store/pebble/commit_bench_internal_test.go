package pebble

import (
	"fmt"
	"testing"
	"time"

	"github.com/roosthub/roost/broker/store"
)

// BenchmarkCommit: the leader's commit of a group of 64 appends of one
// message each, to one queue (outbox copies) or to 64 (sessions), without
// the group's hand-over; ns/op and allocs/op are per group.
//
//	go test -run '^$' -bench Commit -benchmem ./broker/store/pebble
func BenchmarkCommit(b *testing.B) {
	for _, queues := range []int{1, 64} {
		b.Run(fmt.Sprintf("queues=%d", queues), func(b *testing.B) {
			s, err := New(Config{Dir: b.TempDir(), SyncInterval: time.Hour})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			msg := store.Message{Topic: "t/1", Payload: make([]byte, 100), QoS: 1, Created: time.Now()}
			reqs := make([]*appendReq, 64)
			for i := range reqs {
				reqs[i] = &appendReq{tenant: "acme", items: []store.Item{{ClientID: fmt.Sprintf("sub-%d", i%queues), Message: msg}}}
			}
			for b.Loop() {
				applied, err := s.commit(reqs)
				if err != nil {
					b.Fatal(err)
				}
				if err := applied.SyncWait(); err != nil {
					b.Fatal(err)
				}
				applied.Close()
			}
		})
	}
}
