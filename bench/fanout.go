package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/bench/mqttc"
)

// FanoutResult is one run of the fanout scenario.
type FanoutResult struct {
	Subscribers int     `json:"subscribers"`
	QoS         byte    `json:"qos"`
	Sent        uint64  `json:"sent"`
	PerSecond   float64 `json:"delivered_per_second"`
	P99         float64 `json:"p99_ms"`
	Tally       Tally   `json:"tally"`
	// P99ByAddr is, with subscribers at several addresses, the p99 of the
	// first subscriber at each.
	P99ByAddr map[string]float64 `json:"p99_ms_by_addr,omitempty"`
}

// Fanout has one publisher (at t.PubAddr(0)) send to subs subscribers of
// one topic (subscriber i at t.SubAddr(i)) for d, at rate messages a
// second (0: as fast as it goes). Delivered messages a second counts every
// copy. The latency is the first subscriber's; with subscribers at several
// addresses, the first subscriber at each address is sampled too, for
// P99ByAddr.
func Fanout(ctx context.Context, t Target, subs int, qos byte, rate int, d time.Duration) (FanoutResult, error) {
	run := runs.Add(1)
	topic := runTopic("fan", run, -1)
	var lat Latencies
	byAddr := map[string]*Latencies{}
	var delivered atomic.Int64
	streams := make([]Streams, subs)
	clients := make([]*mqttc.Client, 0, subs+1)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := range subs {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := mqttc.Dial(cctx, t.SubAddr(i), t.options(fmt.Sprintf("fan-%d-%d", run, i)))
		if err != nil {
			cancel()
			return FanoutResult{}, fmt.Errorf("subscriber %d: %w", i, err)
		}
		clients = append(clients, c)
		// One subscriber's latencies stand for all (for each address).
		var sample *Latencies
		if i == 0 {
			sample = &lat
		}
		if addr := t.SubAddr(i); len(t.SubAddrs) > 1 || len(t.Addrs) > 1 {
			if byAddr[addr] == nil {
				if sample == nil {
					sample = new(Latencies)
				}
				byAddr[addr] = sample
			}
		}
		c.OnMessage = func(_ string, p []byte) {
			if len(p) < header {
				return
			}
			streams[i].Seen(topic, binary.BigEndian.Uint64(p))
			if sample != nil {
				sample.Add(time.Since(time.Unix(0, int64(binary.BigEndian.Uint64(p[8:])))))
			}
			delivered.Add(1)
		}
		code, err := c.Subscribe(cctx, topic, qos)
		cancel()
		if err != nil || code > 2 {
			return FanoutResult{}, fmt.Errorf("subscribe: %v (code %#x)", err, code)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	pub, err := mqttc.Dial(cctx, t.PubAddr(0), t.options(fmt.Sprintf("fan-pub-%d", run)))
	cancel()
	if err != nil {
		return FanoutResult{}, fmt.Errorf("publisher: %w", err)
	}
	clients = append(clients, pub)
	payload := make([]byte, header)
	var tick <-chan time.Time
	if rate > 0 {
		tk := time.NewTicker(time.Second / time.Duration(rate))
		defer tk.Stop()
		tick = tk.C
	}
	start := time.Now()
	var sent uint64
	for time.Since(start) < d {
		if tick != nil {
			<-tick
		}
		binary.BigEndian.PutUint64(payload, sent)
		binary.BigEndian.PutUint64(payload[8:], uint64(time.Now().UnixNano()))
		if err := pub.Publish(ctx, topic, payload, qos); err != nil {
			return FanoutResult{}, err
		}
		sent++
	}
	want := int64(sent) * int64(subs)
	settle := time.Now().Add(2 * time.Second)
	for delivered.Load() < want && time.Now().Before(settle) {
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	r := FanoutResult{Subscribers: subs, QoS: qos, Sent: sent, PerSecond: float64(delivered.Load()) / took.Seconds(), P99: ms(lat.Percentile(99))}
	if len(byAddr) > 0 {
		r.P99ByAddr = map[string]float64{}
		for addr, l := range byAddr {
			r.P99ByAddr[addr] = ms(l.Percentile(99))
		}
	}
	for i := range streams {
		t := streams[i].Tally(map[string]uint64{topic: sent})
		r.Tally.Received += t.Received
		r.Tally.Lost += t.Lost
		r.Tally.Duplicates += t.Duplicates
		r.Tally.OutOfOrder += t.OutOfOrder
	}
	return r, nil
}

// IdleConnections opens n connections that then do nothing, and returns the
// growth of the broker process's resident memory per connection, read from
// /proc after settle (and after GC, for a target that can be asked to). The
// connections stay open until close is called, so
// that a later run measures fresh growth rather than memory this run's
// connections left behind for reuse.
func IdleConnections(ctx context.Context, t Target, pid, n int, settle time.Duration) (per float64, close func(), err error) {
	var mu sync.Mutex
	clients := make([]*mqttc.Client, 0, n)
	close = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range clients {
			c.Close()
		}
		clients = nil
	}
	rss := func() (int64, error) {
		if t.GC != nil {
			if err := t.GC(); err != nil {
				return 0, fmt.Errorf("GC: %w", err)
			}
		}
		return RSS(pid)
	}
	before, err := rss()
	if err != nil {
		return 0, close, err
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	var failed atomic.Int64
	prefix := fmt.Sprintf("idle-%d-", runs.Add(1))
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			c, err := mqttc.Dial(cctx, t.ClientAddr(i), t.options(prefix+strconv.Itoa(i)))
			if err != nil {
				failed.Add(1)
				return
			}
			mu.Lock()
			clients = append(clients, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		return 0, close, fmt.Errorf("%d of %d idle connections failed", f, n)
	}
	time.Sleep(settle)
	after, err := rss()
	if err != nil {
		return 0, close, err
	}
	return float64(after-before) / float64(n), close, nil
}

// RSS is a process's resident set in bytes, from /proc.
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for process %d", pid)
}

// CPUTime is the CPU time a process has used, user and system, from /proc.
// Clock ticks are taken to be 100 a second, as on every Linux Roost runs on.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces: state is the 3rd field, utime the 14th, stime the 15th.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}
