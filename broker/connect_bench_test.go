package broker_test

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/roosthub/roost/bench"
	"github.com/roosthub/roost/bench/mqttc"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// BenchmarkConnectMochi is BenchmarkConnect against bare mochi-mqtt tuned
// as Roost tunes a tenant's instance (as roost-bench -serve-mochi
// -mochi-tuned runs it): the same clients, in the same process, so that
// the difference in cpu-µs/connect between the two is the brokers'. Run
// both in one invocation and compare them side by side:
//
//	go test -run '^$' -bench 'Connect(Mochi)?$' -benchtime 10000x -count 5 ./broker
func BenchmarkConnectMochi(b *testing.B) {
	addr := serveMochi(b)
	cpu0 := testenv.CPUTime()
	connectAll(b, addr, "bench/d", "secret")
	b.ReportMetric(float64((testenv.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/connect")
}

// serveMochi starts bare mochi tuned as Roost tunes a tenant's instance,
// allowing every client, and returns its address.
func serveMochi(b *testing.B) string {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 1024
	caps.TopicAliasMaximum = 64
	srv := mqtt.New(&mqtt.Options{Capabilities: caps, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(bench.AllowAll), nil); err != nil {
		b.Fatal(err)
	}
	// mochi's TCP listener takes an address: a free one, found by
	// listening on port 0 and closing.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "bench", Address: addr})); err != nil {
		b.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	return addr
}

// BenchmarkConnectServe is BenchmarkConnect with the hub's events going
// where `roost serve` sends them (cmd/roost/node.go): the in-memory log of
// each tenant's recent events and the Recorder, which stores them in the
// directory (SQLite here) for GET /events. It is the Roost side of the
// comparison with BenchmarkConnectMochi:
//
//	go test -run '^$' -bench 'Connect(Serve|Mochi)$' -benchtime 5000x -count 5 ./broker
func BenchmarkConnectServe(b *testing.B) {
	addr, username, secret := serveRoost(b)
	cpu0 := testenv.CPUTime()
	connectAll(b, addr, username, secret)
	b.ReportMetric(float64((testenv.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/connect")
}

// serveRoost starts a hub as BenchmarkConnectServe describes, with one
// tenant whose rates and max_connections are lifted and one device that
// takes any client id, and returns its address and the device's
// credentials.
func serveRoost(b *testing.B) (addr, username, secret string) {
	s := newStack(b, func(c *broker.Config) {
		c.Log = slog.New(slog.DiscardHandler)
		rec := events.NewRecorder(events.RecorderConfig{Writer: c.Directory.(events.Writer)})
		// Closed after the hub (cleanups run last first), before the store.
		b.Cleanup(func() { rec.Close() })
		c.Events = events.Tee{events.NewMemory(1000), rec}
	})
	s.tenant("bench")
	liftRates(b, s, "bench")
	s.setQuota("bench", "max_connections", 1<<40)
	return s.addr, "bench/d", s.device("bench", "d", tenants.ClientIDsAny)
}

// BenchmarkConnectServer is BenchmarkConnectServe and BenchmarkConnectMochi
// with the clients in a process of their own (this test binary again: see
// TestMain), so that server-cpu-µs/connect is the broker's CPU alone —
// what the clients cost is the larger part of the others' cpu-µs/connect,
// and the same for both brokers:
//
//	go test -run '^$' -bench 'ConnectServer' -benchtime 5000x -count 5 ./broker
func BenchmarkConnectServer(b *testing.B) {
	b.Run("roost", func(b *testing.B) {
		addr, username, secret := serveRoost(b)
		connectFromChild(b, addr, username, secret)
	})
	b.Run("mochi", func(b *testing.B) {
		connectFromChild(b, serveMochi(b), "bench/d", "secret")
	})
}

// connectFromChild makes b.N connections to addr from a child process, as
// connectAll makes them, and reports the connects a second and this
// process's CPU time per connect.
func connectFromChild(b *testing.B, addr, username, secret string) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "ROOST_CONNECT_CLIENTS="+addr, "ROOST_CONNECT_USERNAME="+username,
		"ROOST_CONNECT_SECRET="+secret, "ROOST_CONNECT_N="+strconv.Itoa(b.N))
	b.ResetTimer()
	cpu0 := testenv.CPUTime()
	out, err := cmd.CombinedOutput()
	cpu := testenv.CPUTime() - cpu0
	b.StopTimer()
	if err != nil {
		b.Fatalf("clients: %v\n%s", err, out)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "connects/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "server-cpu-µs/connect")
}

// TestMain lets the test binary stand in for BenchmarkConnectServer's
// clients: with ROOST_CONNECT_CLIENTS set to a broker's address, it makes
// ROOST_CONNECT_N connections to it, 64 dialing at once, each closed once
// its CONNACK arrives, and exits.
func TestMain(m *testing.M) {
	if addr := os.Getenv("ROOST_CONNECT_CLIENTS"); addr != "" {
		n, err := strconv.ParseInt(os.Getenv("ROOST_CONNECT_N"), 10, 64)
		if err == nil {
			err = connectClients(addr, os.Getenv("ROOST_CONNECT_USERNAME"), os.Getenv("ROOST_CONNECT_SECRET"), n)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// connectClients makes n connections to addr as connectAll makes them, and
// returns the first error.
func connectClients(addr, username, secret string, n int64) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range 64 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > n {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				c, err := mqttc.Dial(ctx, addr, mqttc.Options{ClientID: fmt.Sprintf("c%d", i), Username: username, Password: secret})
				cancel()
				if err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
					return
				}
				c.Close()
			}
		})
	}
	wg.Wait()
	return first
}
