// Command roost-bench drives an MQTT broker with one scenario, several
// times, and reports each run and the median and spread of the headline
// figure, as a table and optionally as JSON.
//
//	roost-bench -addr 127.0.0.1:1883 -scenario p2p -qos 1 -pairs 16 -duration 5s
//	roost-bench -addr 127.0.0.1:1883 -username acme/bench -password ... -scenario conn -n 2000
//
// The clients of one run can be spread over several addresses (the nodes
// of a fleet serving one tenant together): -addr takes a comma-separated
// list that clients connect to in turn, and -pub-addr and -sub-addr put
// publishers and subscribers elsewhere than each other:
//
//	roost-bench -pub-addr node1:1883 -sub-addr node2:1883 -scenario p2p -qos 1
//	roost-bench -pub-addr node1:1883 -sub-addr node1:1883,node2:1883,node3:1883 -scenario fanout -subs 300 -rate 500
//	roost-bench -addr node1:1883,node2:1883 -scenario hold -n 30000 -max-failures 200 -hold 30s
//
// Every scenario counts loss, duplicates and order violations; a loopback
// calibration (ping-pong round trip) is reported with the results so that
// figures from different machines can be compared.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/roosthub/roost/bench"
)

func main() {
	ctx, stop := signalContext()
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "roost-bench:", err)
		os.Exit(1)
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt)
}

// report is what one invocation produces.
type report struct {
	Scenario    string         `json:"scenario"`
	Target      bench.Target   `json:"target"`
	Calibration calibration    `json:"calibration"`
	Runs        []any          `json:"runs"`
	Headline    string         `json:"headline"`
	Summary     bench.Summary  `json:"summary"`
	Params      map[string]any `json:"params"`
	Totals      bench.Tally    `json:"tally"`
}

// calibration describes the machine, so that figures from different
// machines can be compared.
type calibration struct {
	LoopbackRTTMicros float64 `json:"loopback_rtt_us"`
	// SmallWritesPerSecond is how many 16-byte writes a second one loopback
	// TCP connection takes, read on the other end.
	SmallWritesPerSecond float64 `json:"small_writes_per_second"`
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("roost-bench", flag.ContinueOnError)
	var (
		t        target
		scenario = fs.String("scenario", "p2p", "conn, p2p, fanout or hold")
		runs     = fs.Int("runs", 3, "how many times to run the scenario (with -suite: each figure, when given)")
		n        = fs.Int("n", 1000, "conn, hold: clients")
		rate     = fs.Int("rate", 0, "conn, hold: connects a second; p2p: messages a second over all pairs; fanout: messages a second (0: as fast as they go)")
		hold     = fs.Duration("hold", time.Second, "conn, hold: how long the clients stay connected")
		pairs    = fs.Int("pairs", 8, "p2p: publisher/subscriber pairs")
		qos      = fs.Int("qos", 1, "p2p, fanout: QoS 0 or 1")
		size     = fs.Int("size", 16, "p2p: payload bytes (at least 16)")
		duration = fs.Duration("duration", 5*time.Second, "p2p, fanout: how long each run sends")
		subs     = fs.Int("subs", 100, "fanout: subscribers of the one topic")
		maxFail  = fs.Int("max-failures", 0, "hold: stop connecting once this many connects failed (0: try all -n)")
		dialWait = fs.Duration("dial-timeout", 10*time.Second, "hold: how long one connect may take, up to its CONNACK")
		pubAddr  = fs.String("pub-addr", "", "p2p, fanout: where publishers connect, a comma-separated list taken in turn (default: as -addr)")
		subAddr  = fs.String("sub-addr", "", "p2p, fanout: where subscribers connect, a comma-separated list taken in turn (default: as -addr)")
		addrs    string
		keep     uint
		jsonOut  = fs.String("json", "", "also write the report as JSON to this file")
		suite    = fs.String("suite", "", "quick, full or smoke: start Roost, bare mochi-mqtt, mosquitto and NATS's MQTT mode and run every scenario on each, pinned to one CPU, then on the whole machine")
		only     = fs.String("only", "", "for -suite: \"memory\" runs the memory scenarios alone (idle tenants, idle connections) and writes <suite>-memory.json; a comma-separated list of the pinned run's figures (p2p_qos1_pipelined_throughput, ...) runs those alone and writes <suite>-only.json")
		roostB   = fs.String("roost-b", "", "for -suite: a second roost binary, measured beside -roost as the target roost-b (two builds in one run)")
		trace    = fs.Bool("trace", false, "with -profile: execution traces (<target>-<figure>-<run>.trace) instead of CPU profiles")
		profDir  = fs.String("profile", "", "for -suite: write a CPU profile of each Go broker (roost, mochi, nats) during each run of each figure to this directory")
		roostBin = fs.String("roost", "roost", "for -suite: the roost binary")
		outDir   = fs.String("out", "bench/results", "for -suite: where <suite>.json goes")
		mochi    = fs.String("serve-mochi", "", "internal: serve bare mochi-mqtt on this address")
		tuned    = fs.Bool("mochi-tuned", false, "internal: with Roost's tuning")
		mochiDbg = fs.String("mochi-debug", "", "internal: debug listener of the bare mochi-mqtt broker")
		nats     = fs.String("serve-nats", "", "internal: serve NATS's MQTT mode on this address")
		natsDbg  = fs.String("nats-debug", "", "internal: debug listener of the NATS broker")
		natsDir  = fs.String("nats-store", "", "internal: the NATS broker's JetStream directory")
		attack   = fs.String("noisy-attack", "", "internal: attack as the noisy neighbour (JSON options) until stdin closes")
		noisy    = fs.String("noisy", "", "quick, full or smoke: run only the noisy neighbour at that suite's size, on Roost, on Roost without its pre-accept rates and on mosquitto")
	)
	fs.StringVar(&t.Name, "name", "target", "the target's name in the report")
	fs.StringVar(&addrs, "addr", "127.0.0.1:1883", "broker address; or a comma-separated list that clients connect to in turn")
	fs.UintVar(&keep, "keepalive", 60, "every client's keep-alive in seconds (the clients send no PINGREQ: hold shorter than 1.5 times it)")
	fs.StringVar(&t.Username, "username", "", "username for every client")
	fs.StringVar(&t.Password, "password", "", "password for every client")
	fs.StringVar(&t.ClientPrefix, "client-prefix", "bench-", "prefix of every client id")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *mochi != "":
		return serveMochi(*mochi, *mochiDbg, *tuned)
	case *nats != "":
		return serveNats(*nats, *natsDbg, *natsDir)
	case *attack != "":
		return serveAttack(*attack, os.Stdin, out)
	case *noisy != "":
		return runNoisy(ctx, *noisy, *roostBin, out)
	case *suite != "":
		x := suiteExtra{profile: *profDir, trace: *trace, roostB: *roostB}
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "runs" {
				x.runs = *runs
			}
		})
		return runSuite(ctx, *suite, *only, *roostBin, *outDir, x, out)
	}
	if *runs < 1 || *qos < 0 || *qos > 1 {
		return errors.New("-runs must be at least 1 and -qos 0 or 1")
	}
	if err := t.setAddrs(addrs, *pubAddr, *subAddr, *scenario); err != nil {
		return err
	}
	if keep < 1 || keep > 65535 {
		return errors.New("-keepalive must be 1 to 65535 seconds")
	}
	t.KeepAlive = uint16(keep)
	cal, err := calibrate()
	if err != nil {
		return fmt.Errorf("calibration: %w", err)
	}
	rep := report{Scenario: *scenario, Target: t.Target, Calibration: cal}
	var figures []float64
	for i := range *runs {
		switch *scenario {
		case "conn":
			rep.Headline = "connects_per_second"
			rep.Params = map[string]any{"clients": *n, "rate": *rate, "hold": hold.String()}
			r, err := bench.Conn(ctx, t.Target, *n, *rate, *hold)
			if err != nil {
				return err
			}
			rep.Runs = append(rep.Runs, r)
			figures = append(figures, r.PerSecond)
			fmt.Fprintf(out, "run %d: %d clients, %d failed, %.0f connects/s, CONNACK p50 %.2f ms p99 %.2f ms\n",
				i+1, r.Clients, r.Failures, r.PerSecond, r.ConnackP50, r.ConnackP99)
		case "p2p":
			rep.Headline = "delivered_per_second"
			rep.Params = map[string]any{"pairs": *pairs, "qos": *qos, "size": *size, "rate": *rate, "duration": duration.String()}
			r, err := bench.P2P(ctx, t.Target, *pairs, byte(*qos), *size, *rate, *duration)
			if err != nil {
				return err
			}
			rep.Runs = append(rep.Runs, r)
			figures = append(figures, r.PerSecond)
			rep.Totals.Received += r.Tally.Received
			rep.Totals.Lost += r.Tally.Lost
			rep.Totals.Duplicates += r.Tally.Duplicates
			rep.Totals.OutOfOrder += r.Tally.OutOfOrder
			fmt.Fprintf(out, "run %d: %d sent, %.0f msgs/s, p50 %.2f ms p99 %.2f ms p99.9 %.2f ms, lost %d dup %d out of order %d\n",
				i+1, r.Sent, r.PerSecond, r.P50, r.P99, r.P999, r.Tally.Lost, r.Tally.Duplicates, r.Tally.OutOfOrder)
		case "fanout":
			rep.Headline = "delivered_per_second"
			rep.Params = map[string]any{"subscribers": *subs, "qos": *qos, "rate": *rate, "duration": duration.String()}
			r, err := bench.Fanout(ctx, t.Target, *subs, byte(*qos), *rate, *duration)
			if err != nil {
				return err
			}
			rep.Runs = append(rep.Runs, r)
			figures = append(figures, r.PerSecond)
			rep.Totals.Received += r.Tally.Received
			rep.Totals.Lost += r.Tally.Lost
			rep.Totals.Duplicates += r.Tally.Duplicates
			rep.Totals.OutOfOrder += r.Tally.OutOfOrder
			fmt.Fprintf(out, "run %d: %d sent to %d subscribers, %.0f copies/s, p99 %.2f ms%s, lost %d dup %d out of order %d\n",
				i+1, r.Sent, r.Subscribers, r.PerSecond, r.P99, byAddr(" (p99 by address:", r.P99ByAddr, "%.2f ms", ")"),
				r.Tally.Lost, r.Tally.Duplicates, r.Tally.OutOfOrder)
		case "hold":
			rep.Headline = "held_connections"
			rep.Params = map[string]any{"clients": *n, "rate": *rate, "hold": hold.String(), "max_failures": *maxFail, "dial_timeout": dialWait.String(), "keepalive": keep}
			r, err := bench.Hold(ctx, t.Target, bench.HoldOptions{N: *n, Rate: *rate, MaxFailures: *maxFail, DialTimeout: *dialWait, Hold: *hold,
				Holding: func(r bench.HoldResult) {
					fmt.Fprintf(out, "run %d: holding %d connections (%d of %d failed) for %v%s\n",
						i+1, r.Held, r.Failures, r.Attempted, *hold, byAddr(":", r.HeldByAddr, "%d", ""))
				}})
			if err != nil {
				return err
			}
			rep.Runs = append(rep.Runs, r)
			figures = append(figures, float64(r.Held))
			fmt.Fprintf(out, "run %d: held %d of %d, %d failed, %d dropped during the hold, %.0f connects/s, CONNACK p50 %.2f ms p99 %.2f ms\n",
				i+1, r.Held, r.Attempted, r.Failures, r.Dropped, r.PerSecond, r.ConnackP50, r.ConnackP99)
			if r.FirstFailed != "" {
				fmt.Fprintf(out, "run %d: first failure: %s\n", i+1, r.FirstFailed)
			}
		default:
			return fmt.Errorf("unknown scenario %q (conn, p2p, fanout or hold)", *scenario)
		}
	}
	rep.Summary = bench.Summarise(figures)
	fmt.Fprintf(out, "%s %s: median %.0f (min %.0f, max %.0f) over %d runs; loopback RTT %.1f µs\n",
		t.Name, rep.Headline, rep.Summary.Median, rep.Summary.Min, rep.Summary.Max, len(figures), rep.Calibration.LoopbackRTTMicros)
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// target is the broker under test as the flags give it.
type target struct{ bench.Target }

// setAddrs sets where clients connect from -addr, -pub-addr and -sub-addr.
// One address in -addr is taken as it is, as it always was.
func (t *target) setAddrs(addr, pub, sub, scenario string) error {
	if strings.Contains(addr, ",") {
		list, err := addrList("-addr", addr)
		if err != nil {
			return err
		}
		t.Addr, t.Addrs = list[0], list
	} else {
		t.Addr = addr
	}
	if pub == "" && sub == "" {
		return nil
	}
	if scenario != "p2p" && scenario != "fanout" {
		return fmt.Errorf("-pub-addr and -sub-addr are for the p2p and fanout scenarios, not %q (spread its clients with -addr a,b,...)", scenario)
	}
	var err error
	if pub != "" {
		if t.PubAddrs, err = addrList("-pub-addr", pub); err != nil {
			return err
		}
	}
	if sub != "" {
		if t.SubAddrs, err = addrList("-sub-addr", sub); err != nil {
			return err
		}
	}
	return nil
}

// addrList parses a comma-separated list of host:port addresses.
func addrList(flag, s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return nil, fmt.Errorf("%s: %q is not host:port", flag, a)
		}
		out = append(out, a)
	}
	return out, nil
}

// byAddr formats per-address figures, in address order, or nothing when
// there are none.
func byAddr[V any](before string, m map[string]V, format, after string) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s "+format, k, m[k])
	}
	return before + " " + strings.Join(parts, ", ") + after
}

// calibrate measures the loopback: the median round trip of one byte over
// a TCP connection, and the rate of 16-byte writes one connection takes.
func calibrate() (calibration, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return calibration{}, err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return calibration{}, err
	}
	defer c.Close()
	var samples []time.Duration
	b := []byte{1}
	for range 1000 {
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			return calibration{}, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return calibration{}, err
		}
		samples = append(samples, time.Since(start))
	}
	slices.Sort(samples)
	cal := calibration{LoopbackRTTMicros: float64(samples[len(samples)/2].Nanoseconds()) / 1000}

	// Small writes: the echo comes back and is drained alongside.
	w, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return calibration{}, err
	}
	defer w.Close()
	go io.Copy(io.Discard, w)
	small := make([]byte, 16)
	writes := 0
	start := time.Now()
	for time.Since(start) < 300*time.Millisecond {
		for range 100 {
			if _, err := w.Write(small); err != nil {
				return calibration{}, err
			}
		}
		writes += 100
	}
	cal.SmallWritesPerSecond = float64(writes) / time.Since(start).Seconds()
	return cal, nil
}
