package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/bench/mqttc"
)

// HoldResult is one run of the hold scenario.
type HoldResult struct {
	// Attempted is how many clients tried to connect, Held how many did
	// (and were held), Failures how many did not.
	Attempted int `json:"attempted"`
	Held      int `json:"held"`
	Failures  int `json:"failures"`
	// Dropped is how many of those held the broker closed before the hold
	// ended.
	Dropped int `json:"dropped"`
	// HeldByAddr is how many were held at each address.
	HeldByAddr map[string]int `json:"held_by_addr"`
	// PerSecond is connects a second until the last that succeeded.
	PerSecond   float64 `json:"connects_per_second"`
	ConnackP50  float64 `json:"connack_p50_ms"`
	ConnackP99  float64 `json:"connack_p99_ms"`
	FirstFailed string  `json:"first_failure,omitempty"`
}

// HoldOptions shape a run of Hold.
type HoldOptions struct {
	// N is how many clients to connect at most; client i connects to
	// t.ClientAddr(i).
	N int
	// Rate is connects a second at most (0: as fast as they go).
	Rate int
	// Parallel is how many dial at once: 64 if zero.
	Parallel int
	// MaxFailures stops connecting more clients once this many have
	// failed (0: every one of the N is tried). What is in flight then
	// still finishes.
	MaxFailures int
	// DialTimeout bounds each connect, up to the CONNACK: 10 s if zero.
	DialTimeout time.Duration
	// Hold is how long the connected clients stay connected, idle.
	Hold time.Duration
	// Holding, if set, is called once the clients are connected, before
	// the hold, with what is known then (a script reads the broker's
	// memory while they are held).
	Holding func(HoldResult)
}

// Hold connects up to o.N idle clients, spread over the target's
// addresses, holds them for o.Hold, and reports how many it held, where,
// and how many the broker dropped meanwhile: how many idle connections a
// broker (or a fleet) takes before connects start to fail.
func Hold(ctx context.Context, t Target, o HoldOptions) (HoldResult, error) {
	if o.Parallel <= 0 {
		o.Parallel = 64
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	run := runs.Add(1)
	var lat Latencies
	var failures atomic.Int64
	var firstErr atomic.Value
	var lastOK atomic.Int64 // since start
	clients := make([]*mqttc.Client, o.N)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	sem := make(chan struct{}, o.Parallel)
	var tick <-chan time.Time
	if o.Rate > 0 {
		tk := time.NewTicker(time.Second / time.Duration(o.Rate))
		defer tk.Stop()
		tick = tk.C
	}
	var wg sync.WaitGroup
	attempted := 0
	start := time.Now()
dial:
	for i := range o.N {
		if o.MaxFailures > 0 && failures.Load() >= int64(o.MaxFailures) {
			break
		}
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
				break dial
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break dial
		}
		attempted++
		wg.Go(func() {
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
			defer cancel()
			began := time.Now()
			c, err := mqttc.Dial(cctx, t.ClientAddr(i), t.options(fmt.Sprintf("hold-%d-%d", run, i)))
			if err != nil {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %v", t.ClientAddr(i), err))
				return
			}
			lat.Add(time.Since(began))
			clients[i] = c
			for at := int64(time.Since(start)); ; {
				last := lastOK.Load()
				if at <= last || lastOK.CompareAndSwap(last, at) {
					break
				}
			}
		})
	}
	wg.Wait()
	r := HoldResult{Attempted: attempted, Failures: int(failures.Load()), HeldByAddr: map[string]int{},
		ConnackP50: ms(lat.Percentile(50)), ConnackP99: ms(lat.Percentile(99))}
	if v, ok := firstErr.Load().(string); ok {
		r.FirstFailed = v
	}
	for i, c := range clients {
		if c != nil {
			r.Held++
			r.HeldByAddr[t.ClientAddr(i)]++
		}
	}
	if took := time.Duration(lastOK.Load()); took > 0 {
		r.PerSecond = float64(r.Held) / took.Seconds()
	}
	if o.Holding != nil {
		o.Holding(r)
	}
	select {
	case <-time.After(o.Hold):
	case <-ctx.Done():
	}
	for _, c := range clients {
		if c == nil {
			continue
		}
		select {
		case <-c.Done():
			r.Dropped++
		default:
		}
	}
	return r, ctx.Err()
}
