package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/bench/mqttc"
)

// FaninResult is one run of the fanin scenario.
type FaninResult struct {
	Publishers  int     `json:"publishers"`
	Subscribers int     `json:"subscribers"` // 1, or the members of one shared-subscription group
	QoS         byte    `json:"qos"`
	Sent        uint64  `json:"sent"`
	PerSecond   float64 `json:"delivered_per_second"`
	P50         float64 `json:"p50_ms"`
	P99         float64 `json:"p99_ms"`
	Tally       Tally   `json:"tally"`
	// Spread is, for a shared group, the fewest and most messages one
	// member received.
	Spread [2]int `json:"spread,omitempty"`
}

// Fanin has pubs publishers, each on a topic of its own, send to one
// subscriber of in/<run>/+ (group 0) or to a shared-subscription group of
// group members ($share/bench/in/<run>/+), at rate messages a second over all
// publishers, for d. Loss and duplicates are counted over the group; order
// per publisher within each member (a group may hand one publisher's
// messages to different members).
func Fanin(ctx context.Context, t Target, pubs, group int, qos byte, rate int, d time.Duration) (FaninResult, error) {
	run := runs.Add(1)
	filter, members := runTopic("in", run, -1)+"/+", 1
	if group > 0 {
		filter, members = "$share/bench/"+filter, group
	}
	var all Streams
	perMember := make([]Streams, members)
	received := make([]atomic.Int64, members)
	var lat Latencies
	var delivered atomic.Int64
	var clients []*mqttc.Client
	var mu sync.Mutex
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for m := range members {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := mqttc.Dial(cctx, t.SubAddr(m), t.options(fmt.Sprintf("in-sub-%d-%d", run, m)))
		if err != nil {
			cancel()
			return FaninResult{}, fmt.Errorf("subscriber %d: %w", m, err)
		}
		clients = append(clients, c)
		c.OnMessage = func(topic string, p []byte) {
			if len(p) < header {
				return
			}
			n := binary.BigEndian.Uint64(p)
			all.Seen(topic, n)
			perMember[m].Seen(topic, n)
			received[m].Add(1)
			lat.Add(time.Since(time.Unix(0, int64(binary.BigEndian.Uint64(p[8:])))))
			delivered.Add(1)
		}
		code, err := c.Subscribe(cctx, filter, qos)
		cancel()
		if err != nil || code > 2 {
			return FaninResult{}, fmt.Errorf("subscribe %s: %v (code %#x)", filter, err, code)
		}
	}
	publishers := make([]*mqttc.Client, pubs)
	var wg sync.WaitGroup
	var failed atomic.Value
	sem := make(chan struct{}, 64)
	for i := range pubs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			c, err := mqttc.Dial(cctx, t.PubAddr(i), t.options(fmt.Sprintf("in-pub-%d-%d", run, i)))
			if err != nil {
				failed.CompareAndSwap(nil, fmt.Errorf("publisher %d: %w", i, err))
				return
			}
			mu.Lock()
			clients = append(clients, c)
			mu.Unlock()
			publishers[i] = c
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		return FaninResult{}, err
	}
	// Senders take publishers in turn: each of them waits for its PUBACKs
	// at QoS 1, and the rate holds over all of them.
	senders := min(pubs, 64)
	sent := make([]uint64, pubs)
	start := time.Now()
	deadline := start.Add(d)
	interval := time.Duration(float64(time.Second) * float64(senders) / float64(rate))
	for s := range senders {
		wg.Go(func() {
			payload := make([]byte, header)
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for k := s; time.Now().Before(deadline); k += senders {
				<-tick.C
				i := k % pubs
				binary.BigEndian.PutUint64(payload, sent[i])
				binary.BigEndian.PutUint64(payload[8:], uint64(time.Now().UnixNano()))
				if err := publishers[i].Publish(ctx, runTopic("in", run, i), payload, qos); err != nil {
					failed.CompareAndSwap(nil, fmt.Errorf("publisher %d: %w", i, err))
					return
				}
				sent[i]++
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		return FaninResult{}, err
	}
	var total uint64
	byTopic := map[string]uint64{}
	for i, n := range sent {
		total += n
		byTopic[runTopic("in", run, i)] = n
	}
	settle := time.Now().Add(2 * time.Second)
	for uint64(delivered.Load()) < total && time.Now().Before(settle) {
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	r := FaninResult{Publishers: pubs, Subscribers: members, QoS: qos, Sent: total, PerSecond: float64(delivered.Load()) / took.Seconds(),
		P50: ms(lat.Percentile(50)), P99: ms(lat.Percentile(99)), Tally: all.Tally(byTopic)}
	r.Tally.OutOfOrder = 0
	for m := range perMember {
		r.Tally.OutOfOrder += perMember[m].OutOfOrder()
	}
	if group > 0 {
		r.Spread = [2]int{int(received[0].Load()), int(received[0].Load())}
		for m := range received {
			r.Spread[0], r.Spread[1] = min(r.Spread[0], int(received[m].Load())), max(r.Spread[1], int(received[m].Load()))
		}
	}
	return r, nil
}
