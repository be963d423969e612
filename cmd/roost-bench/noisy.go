package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/roosthub/roost/bench"
)

// The noisy neighbour: a quiet client's publish-to-delivery p99 alone and
// while a noisy neighbour attacks the same broker — on Roost another
// tenant (the free plan's limits), on bare mochi, mosquitto and NATS
// another client. The attack is the same for all, in the same run: a
// flood of QoS 0 publishes at ten times the free plan's tenant_publish_rate (10,000 a
// second over 10 connections, 3.1.1) and a storm of 1,000 connection
// attempts a second by raw sockets, each sending a CONNECT. It comes from
// 127.0.0.2 — another host, as far as the broker can tell — in a process
// of its own at the lowest CPU priority and, when brokers are pinned, on
// the last CPU: standing in for machines of its own, so that what reaches
// the quiet client is what the broker does for the attacker, not the
// attacker's own dialing.
const (
	noisyFrom       = "127.0.0.2"
	noisyFloodConns = 10
	noisyFloodRate  = 10_000
	noisyStormRate  = 1_000
)

// noisySizes are the noisy neighbour's rounds (each a solo phase then an
// attack phase) and messages a phase (at 400 a second), by suite.
var noisySizes = map[string]struct{ rounds, perPhase int }{
	"quick": {rounds: 4, perPhase: 800},
	"full":  {rounds: 10, perPhase: 800},
	"smoke": {rounds: 1, perPhase: 40},
}

// noisyTargets are the brokers the noisy neighbour runs on: Roost and
// every peer (the goal compares Roost with mosquitto; bare mochi
// and NATS are measured as every other figure is).
var noisyTargets = []string{"roost", "mochi", "mosquitto", "nats"}

// noisyNeighbour runs the noisy neighbour on each of noisyTargets among
// procs and records, per target, the quiet client's p99 alone and under
// attack (µs) and the degradation (their ratio), and Roost's degradation
// as an absolute figure; noisyRatios compares the two.
func noisyNeighbour(ctx context.Context, suite string, procs []*process, record func(figure, target string, runs []any, values []float64), res *suiteResult, out io.Writer) error {
	sz := noisySizes[suite]
	for _, p := range procs {
		name := p.target.Name
		if !slices.Contains(noisyTargets, name) {
			continue
		}
		fmt.Fprintf(out, "%s, noisy neighbour ...\n", name)
		attack := bench.AttackOptions{Addr: p.target.Addr, From: noisyFrom, FloodConns: noisyFloodConns, FloodRate: noisyFloodRate, StormRate: noisyStormRate}
		if p.call != nil {
			// Roost: the noisy tenant stays on the free plan.
			var device struct{ Secret string }
			if err := p.call("POST", "/v1/tenants", map[string]string{"slug": "noisy"}, nil); err != nil {
				return fmt.Errorf("noisy tenant: %w", err)
			}
			if err := p.call("POST", "/v1/tenants/noisy/devices", map[string]string{"name": "noisy", "client_ids": "any"}, &device); err != nil {
				return fmt.Errorf("noisy device: %w", err)
			}
			attack.Username, attack.Password = "noisy/noisy", device.Secret
		}
		r, err := bench.Noisy(ctx, p.target, p.pid(), sz.rounds, sz.perPhase, func() (func() (bench.AttackTally, error), error) {
			return startAttacker(attack)
		})
		if err != nil {
			return fmt.Errorf("%s noisy neighbour: %w", name, err)
		}
		fmt.Fprintf(out, "%s: quiet p99 %.0f µs alone, %.0f µs under attack: %.2f× (pairs %.2f-%.2f); broker CPU %.0f ms/s alone, %.0f under attack; storm %+v\n",
			name, r.SoloP99, r.AttackP99, r.Degradation, r.MinPairRatio, r.MaxPairRatio, r.SoloCPU, r.AttackCPU, r.Attack)
		runs := []any{r}
		record("noisy_neighbour_solo_p99_us", name, runs, []float64{r.SoloP99})
		record("noisy_neighbour_attack_p99_us", name, runs, []float64{r.AttackP99})
		record("noisy_neighbour_degradation", name, runs, []float64{r.Degradation})
		record("noisy_neighbour_attack_cpu_ms_per_s", name, runs, []float64{r.AttackCPU - r.SoloCPU})
	}
	res.Absolute["noisy_neighbour_degradation_roost"] = nil
	if d, ok := res.Figures["noisy_neighbour_degradation"]["roost"]; ok {
		res.Absolute["noisy_neighbour_degradation_roost"] = &d
	}
	return nil
}

// noisyRatios adds Roost's noisy-neighbour degradation over each peer's
// (smaller is better: the goal is at most 0.5 of mosquitto's) when Roost's
// was measured: null for a peer without the figure.
func noisyRatios(figures map[string]map[string]float64, out map[string]*float64) {
	by := figures["noisy_neighbour_degradation"]
	roost, ok := by["roost"]
	if !ok {
		return
	}
	for _, peer := range noisyTargets[1:] {
		var r *float64
		if m, ok := by[peer]; ok && m > 0 {
			r = new(roost / m)
		}
		out["noisy_neighbour_degradation_roost_vs_"+peer] = r
	}
}

// startAttacker runs the attack in a child process of this binary (see
// serveAttack) and returns what stops it and reports its tally.
func startAttacker(o bench.AttackOptions) (func() (bench.AttackTally, error), error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	opts, _ := json.Marshal(o)
	args := []string{self, "-noisy-attack", string(opts)}
	if canPin() {
		args = append([]string{"taskset", "-c", strconv.Itoa(runtime.NumCPU() - 1)}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	syscall.Setpriority(syscall.PRIO_PROCESS, cmd.Process.Pid, 19)
	time.Sleep(500 * time.Millisecond) // under way before the phase starts
	return func() (bench.AttackTally, error) {
		stdin.Close() // the attacker stops when its stdin closes
		var t bench.AttackTally
		if err := cmd.Wait(); err != nil {
			return t, fmt.Errorf("attacker: %w: %s", err, stderr.String())
		}
		if err := json.Unmarshal(stdout.Bytes(), &t); err != nil {
			return t, fmt.Errorf("attacker's tally: %w", err)
		}
		return t, nil
	}, nil
}

// serveAttack is the child process of startAttacker: it attacks until its
// stdin closes, then writes its tally as JSON.
func serveAttack(opts string, stdin io.Reader, out io.Writer) error {
	var o bench.AttackOptions
	if err := json.Unmarshal([]byte(opts), &o); err != nil {
		return fmt.Errorf("-noisy-attack: %w", err)
	}
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, stdin)
		close(stop)
	}()
	return json.NewEncoder(out).Encode(bench.Attack(o, stop))
}

// runNoisy runs the noisy neighbour alone, at a suite's size, on fresh
// brokers pinned as the suite pins them: Roost as the suite runs it,
// Roost with the pre-accept attempt rates off (ROOST_HANDSHAKE_RATE_PER_*
// = 0: what they buy, in the same run) and mosquitto. It prints each
// target's figures and the ratios; it writes no results file.
func runNoisy(ctx context.Context, suite, roostBin string, out io.Writer) error {
	if _, ok := noisySizes[suite]; !ok {
		return fmt.Errorf("unknown suite %q (quick, full or smoke)", suite)
	}
	dir, err := os.MkdirTemp("", "roost-bench-noisy")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logs, err := os.Create(dir + "/brokers.log")
	if err != nil {
		return err
	}
	defer logs.Close()
	res := suiteResult{Figures: map[string]map[string]float64{}, Spread: map[string]map[string]bench.Summary{}, Runs: map[string]map[string][]any{}, Absolute: map[string]*float64{}}
	record := func(figure, target string, runs []any, values []float64) {
		if res.Figures[figure] == nil {
			res.Figures[figure] = map[string]float64{}
		}
		res.Figures[figure][target] = bench.Summarise(values).Median
	}
	var procs []*process
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	roost, err := startRoost(ctx, roostBin, dir+"/roost", true, logs)
	if err != nil {
		return err
	}
	procs = append(procs, roost)
	os.Setenv("ROOST_HANDSHAKE_RATE_PER_ADDRESS", "0")
	os.Setenv("ROOST_HANDSHAKE_RATE_PER_ENDPOINT", "0")
	off, err := startRoost(ctx, roostBin, dir+"/roost-off", true, logs)
	os.Unsetenv("ROOST_HANDSHAKE_RATE_PER_ADDRESS")
	os.Unsetenv("ROOST_HANDSHAKE_RATE_PER_ENDPOINT")
	if err != nil {
		return err
	}
	procs = append(procs, off)
	mosq, err := startMosquitto(dir, true, logs)
	if err != nil {
		return err
	}
	if mosq != nil {
		procs = append(procs, mosq)
	}
	// The second Roost is measured under the name "roost" too, after the
	// first's figures are kept aside.
	if err := noisyNeighbour(ctx, suite, procs[:1], record, &res, out); err != nil {
		return err
	}
	with := res.Figures["noisy_neighbour_degradation"]["roost"]
	if err := noisyNeighbour(ctx, suite, procs[1:], record, &res, out); err != nil {
		return err
	}
	without := res.Figures["noisy_neighbour_degradation"]["roost"]
	ratios := map[string]*float64{}
	res.Figures["noisy_neighbour_degradation"]["roost"] = with
	noisyRatios(res.Figures, ratios)
	fmt.Fprintf(out, "degradation: roost %.2f, roost without pre-accept rates %.2f, mosquitto %.2f; roost vs mosquitto %s\n",
		with, without, res.Figures["noisy_neighbour_degradation"]["mosquitto"], fmtRatio(ratios["noisy_neighbour_degradation_roost_vs_mosquitto"]))
	return nil
}

func fmtRatio(r *float64) string {
	if r == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", *r)
}
