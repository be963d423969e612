package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/bench/mqttc"
)

// NoisyResult is one target's noisy-neighbour run: the quiet client's
// publish-to-delivery p99 alone and under attack, phases alternating.
type NoisyResult struct {
	Rounds    int     `json:"rounds"`
	PerPhase  int     `json:"messages_per_phase"`
	SoloP99   float64 `json:"solo_p99_us"`
	AttackP99 float64 `json:"attack_p99_us"`
	// Degradation is AttackP99 / SoloP99, over the pooled phases; the
	// pair ratios are each round's attack p99 over its solo p99.
	Degradation  float64 `json:"degradation"`
	MinPairRatio float64 `json:"min_pair_ratio"`
	MaxPairRatio float64 `json:"max_pair_ratio"`
	// Attack is what the attacker saw, summed over the attack phases.
	Attack AttackTally `json:"attack"`
	// SoloCPU and AttackCPU are the broker process's CPU time a second
	// of the solo and the attack phases, in ms (0 without a pid):
	// what the attack costs the broker, less noisy than a p99 on a busy
	// machine.
	SoloCPU   float64 `json:"solo_cpu_ms_per_s"`
	AttackCPU float64 `json:"attack_cpu_ms_per_s"`
}

// AttackTally counts what a noisy attacker's attempts met.
type AttackTally struct {
	FloodBytes int64 `json:"flood_bytes"` // PUBLISH bytes the flood wrote
	// Storm: connection attempts, and how each ended.
	Attempts  int64 `json:"storm_attempts"`
	Accepted  int64 `json:"storm_connack_0"`       // CONNACK 0
	Refused   int64 `json:"storm_connack_refused"` // a CONNACK with a failure code
	Closed    int64 `json:"storm_closed_unread"`   // closed or reset with no CONNACK
	DialError int64 `json:"storm_dial_errors"`     // connect failed (reset during connect included)
	TimedOut  int64 `json:"storm_timed_out"`       // no answer within a second
}

// Add sums another tally into t.
func (t *AttackTally) Add(o AttackTally) {
	t.FloodBytes += o.FloodBytes
	t.Attempts += o.Attempts
	t.Accepted += o.Accepted
	t.Refused += o.Refused
	t.Closed += o.Closed
	t.DialError += o.DialError
	t.TimedOut += o.TimedOut
}

// Noisy measures the quiet client of t (a publisher and a subscriber of
// topic "lat", QoS 0, at 400 messages a second, each waited for before
// the next): rounds times, perPhase messages alone, then perPhase while
// attack runs (start returns a stop that ends it and returns its tally).
// Solo and attack phases alternate, so that a drift of the machine lands
// in both. pid, if not 0, is the broker's process, whose CPU time each
// phase is read.
func Noisy(ctx context.Context, t Target, pid, rounds, perPhase int, start func() (stop func() (AttackTally, error), err error)) (NoisyResult, error) {
	res := NoisyResult{Rounds: rounds, PerPhase: perPhase}
	got := make(chan string, 16)
	sub, err := mqttc.Dial(ctx, t.SubAddr(0), t.options("quiet-sub"))
	if err != nil {
		return res, fmt.Errorf("quiet subscriber: %w", err)
	}
	defer sub.Close()
	sub.OnMessage = func(_ string, payload []byte) {
		select {
		case got <- string(payload):
		default:
		}
	}
	if _, err := sub.Subscribe(ctx, "lat", 0); err != nil {
		return res, fmt.Errorf("quiet subscriber: %w", err)
	}
	pub, err := mqttc.Dial(ctx, t.PubAddr(0), t.options("quiet-pub"))
	if err != nil {
		return res, fmt.Errorf("quiet publisher: %w", err)
	}
	defer pub.Close()

	seq := 0
	measure := func() ([]time.Duration, error) {
		lat := make([]time.Duration, 0, perPhase)
		tick := time.NewTicker(2500 * time.Microsecond)
		defer tick.Stop()
		for range perPhase {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			seq++
			want := strconv.Itoa(seq)
			sent := time.Now()
			if err := pub.Publish(ctx, "lat", []byte(want), 0); err != nil {
				return nil, fmt.Errorf("quiet publish: %w", err)
			}
			timeout := time.After(10 * time.Second)
			for waiting := true; waiting; {
				select {
				case m := <-got:
					waiting = m != want
				case <-timeout:
					return nil, fmt.Errorf("message %s of the quiet client never arrived", want)
				}
			}
			lat = append(lat, time.Since(sent))
		}
		return lat, nil
	}
	p99 := func(lat []time.Duration) time.Duration {
		lat = slices.Clone(lat)
		slices.Sort(lat)
		return lat[len(lat)*99/100]
	}
	var solo, attacked []time.Duration
	var pairs []float64
	var cpu [2]time.Duration     // solo, attack
	var elapsed [2]time.Duration // the same
	phase := func(i int) (lat []time.Duration, err error) {
		var c0 time.Duration
		if pid != 0 {
			if c0, err = CPUTime(pid); err != nil {
				return nil, err
			}
		}
		t0 := time.Now()
		if lat, err = measure(); err != nil {
			return nil, err
		}
		elapsed[i] += time.Since(t0)
		if pid != 0 {
			c1, err := CPUTime(pid)
			if err != nil {
				return nil, err
			}
			cpu[i] += c1 - c0
		}
		return lat, nil
	}
	for range rounds {
		s, err := phase(0)
		if err != nil {
			return res, err
		}
		stop, err := start()
		if err != nil {
			return res, err
		}
		a, err := phase(1)
		tally, stopErr := stop()
		if err = errors.Join(err, stopErr); err != nil {
			return res, err
		}
		res.Attack.Add(tally)
		solo, attacked = append(solo, s...), append(attacked, a...)
		pairs = append(pairs, float64(p99(a))/float64(p99(s)))
	}
	slices.Sort(pairs)
	res.SoloP99 = float64(p99(solo).Nanoseconds()) / 1000
	res.AttackP99 = float64(p99(attacked).Nanoseconds()) / 1000
	res.Degradation = res.AttackP99 / res.SoloP99
	res.MinPairRatio, res.MaxPairRatio = pairs[0], pairs[len(pairs)-1]
	res.SoloCPU = float64(cpu[0].Microseconds()) / 1000 / elapsed[0].Seconds()
	res.AttackCPU = float64(cpu[1].Microseconds()) / 1000 / elapsed[1].Seconds()
	return res, nil
}

// AttackOptions describe a noisy neighbour: a flood of QoS 0 publishes
// over 3.1.1 from FloodConns connections, FloodRate a second in all, and a
// storm of StormRate connection attempts a second, each a raw socket that
// sends a CONNECT and waits a second for its CONNACK. Everything comes
// from the local address From (e.g. 127.0.0.2: another host, as far as
// the broker can tell); its connections use Username and Password.
type AttackOptions struct {
	Addr, From         string
	Username, Password string
	FloodConns         int
	FloodRate          int
	StormRate          int
}

// Attack runs a noisy neighbour until stop is closed and returns what it
// met.
func Attack(o AttackOptions, stop <-chan struct{}) AttackTally {
	var tally AttackTally
	var mu sync.Mutex
	d := net.Dialer{Timeout: time.Second}
	if o.From != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(o.From)}
	}
	var wg sync.WaitGroup
	var flooded atomic.Int64
	for i := range o.FloodConns {
		connect := connectPacket(o.Username, o.Password, fmt.Sprintf("noisy-flood-%d", i))
		wg.Go(func() { flooded.Add(flood(d, o.Addr, connect, o.FloodRate/o.FloodConns, stop)) })
	}
	if o.StormRate > 0 {
		wg.Go(func() {
			tick := time.NewTicker(time.Second / time.Duration(o.StormRate))
			defer tick.Stop()
			var attempts sync.WaitGroup
			for n := 0; ; n++ {
				select {
				case <-stop:
					attempts.Wait()
					return
				case <-tick.C:
				}
				attempts.Go(func() {
					t := stormAttempt(d, o.Addr, connectPacket(o.Username, o.Password, fmt.Sprintf("noisy-storm-%d", n)))
					mu.Lock()
					tally.Add(t)
					mu.Unlock()
				})
			}
		})
	}
	wg.Wait()
	tally.FloodBytes = flooded.Load()
	return tally
}

// connectPacket encodes a 3.1.1 CONNECT.
func connectPacket(username, password, clientID string) []byte {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60, ClientIdentifier: clientID,
			UsernameFlag: username != "", Username: []byte(username), PasswordFlag: password != "", Password: []byte(password)}}
	var b bytes.Buffer
	pk.ConnectEncode(&b)
	return b.Bytes()
}

// flood keeps a connection sending QoS 0 publishes of 64 bytes at rate a
// second, in batches every 10ms, until stop, connecting again if the
// broker closes it; it returns the bytes written.
func flood(d net.Dialer, addr string, connect []byte, rate int, stop <-chan struct{}) int64 {
	var pub bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4, TopicName: "flood", Payload: make([]byte, 64)}
	pk.PublishEncode(&pub)
	batch := bytes.Repeat(pub.Bytes(), max(rate/100, 1))
	var written int64
	for {
		select {
		case <-stop:
			return written
		default:
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			select {
			case <-stop:
				return written
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		// Whatever the broker sends (CONNACK, DISCONNECT) is drained.
		go io.Copy(io.Discard, c)
		c.Write(connect)
		tick := time.NewTicker(10 * time.Millisecond)
	send:
		for {
			select {
			case <-stop:
				tick.Stop()
				c.Close()
				return written
			case <-tick.C:
			}
			c.SetWriteDeadline(time.Now().Add(time.Second))
			n, err := c.Write(batch)
			written += int64(n)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue // the broker reads slowly: that is its answer
				}
				break send
			}
		}
		tick.Stop()
		c.Close()
	}
}

// stormAttempt is one connection attempt of a storm.
func stormAttempt(d net.Dialer, addr string, connect []byte) AttackTally {
	t := AttackTally{Attempts: 1}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.DialError++
		return t
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write(connect); err != nil {
		t.Closed++
		return t
	}
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	var ne net.Error
	switch {
	case err == nil && buf[0] == packets.Connack<<4 && buf[3] == 0:
		t.Accepted++
	case err == nil:
		t.Refused++
	case errors.As(err, &ne) && ne.Timeout():
		t.TimedOut++
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		t.Closed++
	default:
		t.Closed++
	}
	return t
}
