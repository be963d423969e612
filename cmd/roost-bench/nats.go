package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/roosthub/roost/bench"
)

// natsUnsupported are the suite's figures NATS's MQTT mode cannot produce,
// with the reason: the run would only measure the feature's absence.
var natsUnsupported = map[string]string{
	"fanin_shared_qos1_throughput": "NATS's MQTT mode has no shared subscriptions ($share/...)",
}

// startNats runs NATS server's MQTT mode (the nats-server module this
// binary is built with) in a child process of this binary, as startMochi
// runs bare mochi-mqtt: with JetStream, which its MQTT mode needs, storing
// under dir.
func startNats(dir string, pin bool, logs io.Writer) (*process, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	debugAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := brokerCmd(pin, self, "-serve-nats", addr, "-nats-debug", debugAddr, "-nats-store", filepath.Join(dir, "nats"))
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{target: bench.Target{Name: "nats", Addr: addr, ClientPrefix: "b-", GC: gcAt(debugAddr)}, cmd: cmd,
		unsupported: natsUnsupported, debug: debugAddr}
	// The MQTT listener opens once JetStream is up.
	if err := waitPort(addr, 20*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// natsOptions are the options serveNats runs NATS server with: its
// defaults, but for what MQTT needs (a server name and JetStream) and
// ports of the suite's choosing (the NATS client port a free one, no
// monitoring port).
func natsOptions(addr, store string) (*natsserver.Options, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("port of %q: %w", addr, err)
	}
	if store == "" {
		return nil, errors.New("-nats-store is empty")
	}
	return &natsserver.Options{
		ServerName: "roost-bench",
		Host:       "127.0.0.1",
		Port:       natsserver.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   store,
		NoSigs:     true, // the signal context below stops it
		MQTT:       natsserver.MQTTOpts{Host: host, Port: port},
	}, nil
}

// serveNats is the child process of startNats. Its debug listener answers
// POST /debug/gc as roost serve's does.
func serveNats(addr, debugAddr, store string) error {
	if err := serveDebug(debugAddr, nil); err != nil {
		return err
	}
	opts, err := natsOptions(addr, store)
	if err != nil {
		return err
	}
	srv, err := natsserver.NewServer(opts)
	if err != nil {
		return fmt.Errorf("nats server: %w", err)
	}
	srv.ConfigureLogger()
	srv.Start()
	if !srv.ReadyForConnections(20 * time.Second) {
		srv.Shutdown()
		return errors.New("nats server did not become ready")
	}
	ctx, stop := signalContext()
	defer stop()
	<-ctx.Done()
	srv.Shutdown()
	srv.WaitForShutdown()
	return nil
}
