package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/bench/mqttc"
)

// Target is a broker under test.
type Target struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	// Addrs, when set, are the addresses every client connects to in
	// turn (client i of a run to Addrs[i % len(Addrs)]) instead of Addr:
	// the nodes of a fleet that serve one tenant together.
	Addrs []string `json:"addrs,omitempty"`
	// PubAddrs and SubAddrs, when set, are where publishers and
	// subscribers connect, in turn, instead: publishers on one node and
	// subscribers on another measure what crossing between them costs.
	PubAddrs []string `json:"pub_addrs,omitempty"`
	SubAddrs []string `json:"sub_addrs,omitempty"`
	// KeepAlive is every client's keep-alive in seconds; 60 if zero. The
	// clients send no PINGREQ: a broker may end a connection idle for
	// 1.5 times this.
	KeepAlive uint16 `json:"keep_alive,omitempty"`
	// Username and Password are used by every client; ClientPrefix starts
	// every client id (Roost: a device whose client id policy is "any").
	Username     string `json:"-"`
	Password     string `json:"-"`
	ClientPrefix string `json:"-"`
	// GC, when set, has a Go broker collect garbage and return freed
	// memory to the system, so that resident memory is read after GC.
	GC func() error `json:"-"`
}

func (t Target) options(id string) mqttc.Options {
	ka := t.KeepAlive
	if ka == 0 {
		ka = 60
	}
	return mqttc.Options{ClientID: t.ClientPrefix + id, Username: t.Username, Password: t.Password, KeepAlive: ka}
}

// ClientAddr is where client i of a run connects: Addrs in turn, or Addr.
func (t Target) ClientAddr(i int) string { return pick(t.Addrs, i, t.Addr) }

// PubAddr is where publisher i of a run connects: PubAddrs in turn, or
// as ClientAddr.
func (t Target) PubAddr(i int) string { return pick(t.PubAddrs, i, t.ClientAddr(i)) }

// SubAddr is where subscriber i of a run connects: SubAddrs in turn, or
// as ClientAddr.
func (t Target) SubAddr(i int) string { return pick(t.SubAddrs, i, t.ClientAddr(i)) }

func pick(addrs []string, i int, otherwise string) string {
	if len(addrs) == 0 {
		return otherwise
	}
	return addrs[i%len(addrs)]
}

// ConnResult is one run of the conn scenario.
type ConnResult struct {
	Clients     int     `json:"clients"`
	Failures    int     `json:"failures"`
	PerSecond   float64 `json:"connects_per_second"`
	ConnackP50  float64 `json:"connack_p50_ms"`
	ConnackP99  float64 `json:"connack_p99_ms"`
	FirstFailed string  `json:"first_failure,omitempty"`
}

// Conn connects n clients (client i to t.ClientAddr(i)), at most rate a second (0: as fast as they go,
// with 64 dialing at once), holds them for hold, and disconnects them.
func Conn(ctx context.Context, t Target, n, rate int, hold time.Duration) (ConnResult, error) {
	run := runs.Add(1)
	var lat Latencies
	var failures atomic.Int64
	var firstErr atomic.Value
	clients := make([]*mqttc.Client, n)
	sem := make(chan struct{}, 64)
	var tick <-chan time.Time
	if rate > 0 {
		tk := time.NewTicker(time.Second / time.Duration(rate))
		defer tk.Stop()
		tick = tk.C
	}
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
				return ConnResult{}, ctx.Err()
			}
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			began := time.Now()
			c, err := mqttc.Dial(cctx, t.ClientAddr(i), t.options(fmt.Sprintf("conn-%d-%d", run, i)))
			if err != nil {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			lat.Add(time.Since(began))
			clients[i] = c
		})
	}
	wg.Wait()
	took := time.Since(start)
	select {
	case <-time.After(hold):
	case <-ctx.Done():
	}
	for _, c := range clients {
		if c != nil {
			c.Close()
		}
	}
	r := ConnResult{Clients: n, Failures: int(failures.Load()), PerSecond: float64(n-int(failures.Load())) / took.Seconds(),
		ConnackP50: ms(lat.Percentile(50)), ConnackP99: ms(lat.Percentile(99))}
	if v, ok := firstErr.Load().(string); ok {
		r.FirstFailed = v
	}
	return r, nil
}

// runs numbers scenario runs, so that each uses topics and client ids of
// its own: a message still in a broker from an earlier run (a QoS 0 flood
// it had not finished reading) must not land in a later run's counts, and
// a run must not depend on how a broker hands a client id over from a
// connection it is still tearing down (with reused ids, one subscriber of
// a run right after a QoS 0 flood received nothing on bare mochi).
var runs atomic.Int64

// Runs of separate load-generator processes against one broker differ
// too: numbering starts at a point taken from the clock.
func init() { runs.Store(time.Now().UnixNano() / 1000 % 1_000_000_000 * 100) }

// runTopic is a topic of this run: base/<run>/<i>, or base/<run> for i < 0.
func runTopic(base string, run int64, i int) string {
	if i < 0 {
		return fmt.Sprintf("%s/%d", base, run)
	}
	return fmt.Sprintf("%s/%d/%d", base, run, i)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// P2PResult is one run of the p2p scenario.
type P2PResult struct {
	Pairs      int     `json:"pairs"`
	QoS        byte    `json:"qos"`
	Window     int     `json:"window"` // messages in flight per publisher (QoS 1)
	Size       int     `json:"size"`
	Sent       uint64  `json:"sent"`
	PerSecond  float64 `json:"delivered_per_second"`
	P50        float64 `json:"p50_ms"`
	P99        float64 `json:"p99_ms"`
	P999       float64 `json:"p999_ms"`
	Tally      Tally   `json:"tally"`
	FirstError string  `json:"first_error,omitempty"`
}

// header is what each payload starts with: the message number and when it
// was sent.
const header = 16

// P2P runs pairs of a publisher and a subscriber on a topic of their own
// for d (pair i's publisher at t.PubAddr(i), its subscriber at t.SubAddr(i)). rate is messages a second over all pairs; 0 sends as fast as each
// publisher can (at QoS 1, one PUBACK at a time). Every message carries its
// number and send time: loss, duplicates, order and latency are counted at
// the subscriber.
func P2P(ctx context.Context, t Target, pairs int, qos byte, size int, rate int, d time.Duration) (P2PResult, error) {
	return p2p(ctx, t, pairs, qos, size, rate, 1, d)
}

// P2PPipelined is P2P at QoS 1 as fast as each publisher goes with window
// messages in flight: a publisher sends on while it waits for PUBACKs, as
// a gateway or a client library with an inflight window does. A broker
// that answers a burst of publishes in one write shows it here.
func P2PPipelined(ctx context.Context, t Target, pairs, size, window int, d time.Duration) (P2PResult, error) {
	return p2p(ctx, t, pairs, 1, size, 0, max(window, 1), d)
}

func p2p(ctx context.Context, t Target, pairs int, qos byte, size int, rate, window int, d time.Duration) (P2PResult, error) {
	size = max(size, header)
	run := runs.Add(1)
	var streams Streams
	var lat Latencies
	var delivered atomic.Int64
	subs := make([]*mqttc.Client, pairs)
	pubs := make([]*mqttc.Client, pairs)
	defer func() {
		for _, c := range append(subs, pubs...) {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range pairs {
		topic := runTopic("p2p", run, i)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		sub, err := mqttc.Dial(cctx, t.SubAddr(i), t.options(fmt.Sprintf("sub-%d-%d", run, i)))
		if err != nil {
			cancel()
			return P2PResult{}, fmt.Errorf("subscriber %d: %w", i, err)
		}
		subs[i] = sub
		sub.OnMessage = func(_ string, p []byte) {
			if len(p) < header {
				return
			}
			streams.Seen(topic, binary.BigEndian.Uint64(p))
			lat.Add(time.Since(time.Unix(0, int64(binary.BigEndian.Uint64(p[8:])))))
			delivered.Add(1)
		}
		if code, err := sub.Subscribe(cctx, topic, qos); err != nil || code > 2 {
			cancel()
			return P2PResult{}, fmt.Errorf("subscribe %s: %v (code %#x)", topic, err, code)
		}
		pub, err := mqttc.Dial(cctx, t.PubAddr(i), t.options(fmt.Sprintf("pub-%d-%d", run, i)))
		cancel()
		if err != nil {
			return P2PResult{}, fmt.Errorf("publisher %d: %w", i, err)
		}
		pubs[i] = pub
	}
	sent := make([]uint64, pairs)
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for i, pub := range pubs {
		wg.Go(func() {
			payload := make([]byte, size)
			var tick <-chan time.Time
			if rate > 0 {
				tk := time.NewTicker(time.Duration(float64(time.Second) * float64(pairs) / float64(rate)))
				defer tk.Stop()
				tick = tk.C
			}
			// inflight are the PUBACKs a pipelining publisher waits for,
			// oldest first.
			var inflight []func(context.Context) error
			defer func() {
				for _, wait := range inflight {
					if err := wait(ctx); err != nil {
						firstErr.CompareAndSwap(nil, err.Error())
						return
					}
				}
			}()
			for n := uint64(0); time.Now().Before(deadline); n++ {
				if tick != nil {
					<-tick
				}
				binary.BigEndian.PutUint64(payload, n)
				binary.BigEndian.PutUint64(payload[8:], uint64(time.Now().UnixNano()))
				if window > 1 {
					if len(inflight) == window {
						if err := inflight[0](ctx); err != nil {
							firstErr.CompareAndSwap(nil, err.Error())
							return
						}
						inflight = inflight[1:]
					}
					wait, err := pub.PublishAsync(runTopic("p2p", run, i), payload)
					if err != nil {
						firstErr.CompareAndSwap(nil, err.Error())
						return
					}
					inflight = append(inflight, wait)
				} else if err := pub.Publish(ctx, runTopic("p2p", run, i), payload, qos); err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				sent[i] = n + 1
			}
		})
	}
	wg.Wait()
	// Let what is in flight arrive, up to a second after the last send.
	var total uint64
	for _, n := range sent {
		total += n
	}
	settle := time.Now().Add(time.Second)
	for uint64(delivered.Load()) < total && time.Now().Before(settle) {
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	bySteam := map[string]uint64{}
	for i, n := range sent {
		bySteam[runTopic("p2p", run, i)] = n
	}
	r := P2PResult{Pairs: pairs, QoS: qos, Window: window, Size: size, Sent: total, PerSecond: float64(delivered.Load()) / took.Seconds(),
		P50: ms(lat.Percentile(50)), P99: ms(lat.Percentile(99)), P999: ms(lat.Percentile(99.9)), Tally: streams.Tally(bySteam)}
	if v, ok := firstErr.Load().(string); ok {
		r.FirstError = v
	}
	if total == 0 {
		return r, errors.New("nothing was sent")
	}
	return r, nil
}
