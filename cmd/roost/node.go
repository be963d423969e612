package main

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/roosthub/roost"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/fabric"
	kfabric "github.com/roosthub/roost/broker/fabric/kafka"
	"github.com/roosthub/roost/cluster"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/kafkaexport"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/transport"
	"github.com/roosthub/roost/web"
)

// task is one goroutine of a running node. It runs until its context
// ends or the drain stops what it serves, and returns an error only for a
// failure that should end the node.
type task func(ctx context.Context) error

// closers closes what a start opened, last opened first, once.
type closers []func()

func (cs *closers) add(f func()) { *cs = append(*cs, f) }

func (cs *closers) close() {
	for i := len(*cs) - 1; i >= 0; i-- {
		(*cs)[i]()
	}
	*cs = nil
}

// inputs is what the settings point at outside themselves, read before
// anything is opened, so that a bad one stops the start while nothing
// is bound, migrated or announced.
type inputs struct {
	plans     tenants.Plans  // from ROOST_PLANS_FILE; nil: the built-in plans
	endpoints []web.Endpoint // ROOST_DEVICE_ENDPOINTS
	tls       *tls.Config    // for the TLS listeners; nil: none asked for
	trust     string         // with the development CA: where clients find it
}

// readInputs reads the plans file and the TLS certificate (making the
// development one first with ROOST_DEV_TLS).
func readInputs(c *config, log *slog.Logger) (*inputs, error) {
	in := &inputs{}
	var err error
	if in.endpoints, err = c.deviceEndpoints(); err != nil {
		return nil, err
	}
	if c.PlansFile != "" {
		f, err := os.Open(c.PlansFile)
		if err != nil {
			return nil, fmt.Errorf("ROOST_PLANS_FILE: %w", err)
		}
		in.plans, err = tenants.LoadPlans(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("ROOST_PLANS_FILE: %s: %w", c.PlansFile, err)
		}
	}
	if c.tlsListeners() {
		certFile, keyFile := c.TLSCert, c.TLSKey
		if c.DevTLS {
			files, err := transport.DevCertificates(filepath.Join(c.DataDir, "tls"))
			if err != nil {
				return nil, fmt.Errorf("ROOST_DEV_TLS: %w", err)
			}
			certFile, keyFile, in.trust = files.Cert, files.Key, " (clients trust "+files.CA+")"
		}
		cert, err := transport.LoadCertificate(certFile, keyFile, log)
		if err != nil {
			return nil, fmt.Errorf("ROOST_TLS_CERT: %w", err)
		}
		in.tls = transport.ServerConfig(cert)
	}
	return in, nil
}

// node is one serving process of a role, built from parts: the
// directory, the data plane (unless a control plane runs apart), the
// HTTP port and the profiler's. startNode opens them in order; run runs
// their goroutines under one errgroup, drains them and waits for every
// one before the parts close, last opened first.
type node struct {
	role   string
	c      *config
	log    *slog.Logger
	stdout io.Writer
	opened closers
	store  *tenants.Store
	// tasks are the control plane's work beside its HTTP side.
	tasks       []task
	data        *dataPlane // nil on a control plane running apart
	front       *httpPort  // the API and console, or a data-plane node's health, metrics and internal API
	debug       *httpPort  // Go's profiler; nil: off
	stopStreams context.CancelFunc
}

// startNode opens a node's parts. The node is announced to the fleet
// last, once everything else is bound and built; a failure on the way
// closes what was opened.
func startNode(ctx context.Context, role string, c *config, in *inputs, log *slog.Logger, stdout io.Writer) (_ *node, err error) {
	n := &node{role: role, c: c, log: log, stdout: stdout}
	defer func() {
		if err != nil {
			n.opened.close()
		}
	}()
	// The API's port first: the commonest failure (it is taken) is then
	// found before anything is opened or written.
	ln, err := net.Listen("tcp", c.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("ROOST_HTTP_ADDR: %w", err)
	}
	n.opened.add(func() { ln.Close() })
	runsData, runsControl := role != roleControl, role != roleData
	if role == roleData && c.SessionStore == "embedded" {
		log.Warn("persistent sessions are on this node's disk: another data-plane node cannot take them over; use ROOST_SESSION_STORE=redis or hbase with more than one node")
	}
	store, err := openStore(ctx, c, log)
	if err != nil {
		return nil, err
	}
	n.store = store
	n.opened.add(func() { store.Close() })
	log.Info("store ready", "database", store.Dialect(), "sessions", c.SessionStore)
	if in.plans != nil {
		store.SetPlans(in.plans)
	}
	adminToken, generated, err := adminToken(c)
	if err != nil {
		return nil, err
	}
	if generated {
		// Not shown unless the start succeeds: nor kept either, or the
		// next start would find it and never show it.
		defer func() {
			if err != nil {
				os.Remove(filepath.Join(c.DataDir, adminTokenFile))
			}
		}()
	}
	key, err := store.Setting(ctx, "session_signing_key", func() string { return randomToken(32) })
	if err != nil {
		return nil, err
	}
	signingKey, err := base64.RawURLEncoding.DecodeString(key)
	if err != nil {
		return nil, fmt.Errorf("session signing key in the store is damaged: %w", err)
	}
	recent := events.NewMemory(1000)
	// Events are stored by the node that raises them, in the directory
	// every node opens (docs/events.md).
	recorder := events.NewRecorder(events.RecorderConfig{Writer: store, Log: log})
	n.opened.add(func() { recorder.Close() })
	var sink events.Sink = events.Tee{recent, recorder}
	var exporter broker.Exporter
	if brokers := c.kafkaBrokers(); len(brokers) > 0 {
		k, err := events.NewKafka(events.KafkaConfig{Brokers: brokers, Log: log})
		if err != nil {
			return nil, fmt.Errorf("ROOST_KAFKA_BROKERS: %w", err)
		}
		n.opened.add(func() { k.Close() })
		sink = events.Tee{recent, recorder, k}
		if runsData {
			x, err := kafkaexport.New(brokers)
			if err != nil {
				return nil, fmt.Errorf("ROOST_KAFKA_BROKERS: %w", err)
			}
			n.opened.add(func() { x.Close() })
			exporter = x
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), recorder.Collector())
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)})

	deps := planeDeps{c: c, log: log, store: store, recent: recent, sink: sink, adminToken: adminToken, metrics: metrics}
	if runsData {
		if n.data, err = openDataPlane(ctx, role, deps, exporter, in, ln.Addr()); err != nil {
			return nil, err
		}
		n.opened.add(n.data.close)
		deps.hub = n.data.hub
		reg.MustRegister(n.data.hub.Collector(broker.DefaultTopTenants))
	}
	if c.DebugAddr != "" {
		debugLn, err := net.Listen("tcp", c.DebugAddr)
		if err != nil {
			return nil, fmt.Errorf("ROOST_DEBUG_ADDR: %w", err)
		}
		n.opened.add(func() { debugLn.Close() })
		n.debug = &httpPort{name: "debug server", ln: debugLn, srv: &http.Server{Handler: debugMux(), ReadHeaderTimeout: 10 * time.Second}}
	}

	// What the HTTP port serves: the API and the console, or a data-plane
	// node's health, metrics and internal API.
	var handler http.Handler
	if runsControl {
		// Where devices connect, for the console: the configured
		// endpoints, or this process's own listeners.
		endpoints := in.endpoints
		if len(endpoints) == 0 && n.data != nil {
			endpoints = n.data.endpoints
		}
		if handler, n.tasks, err = deps.controlHandler(signingKey, displayAddr(ln.Addr()), endpoints); err != nil {
			return nil, err
		}
	} else {
		handler = deps.dataHandler(n.data.listening)
	}
	// Requests' contexts end when the drain starts, so that the console's
	// live streams do not hold the shutdown up.
	streams, stopStreams := context.WithCancel(context.Background())
	n.stopStreams = stopStreams
	n.opened.add(stopStreams)
	n.front = &httpPort{name: "http server", ln: ln, srv: &http.Server{
		BaseContext:       func(net.Listener) context.Context { return streams },
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}}
	n.opened.add(func() { n.front.srv.Close() })
	if n.data != nil {
		if err := n.data.announce(ctx); err != nil {
			return nil, err
		}
	}
	if generated {
		fmt.Fprintf(stdout, "Generated the operator token (kept in %s; shown only now):\n  %s\n",
			filepath.Join(c.DataDir, adminTokenFile), adminToken)
	}
	return n, nil
}

// run serves until ctx ends or a part fails, then drains. It returns once
// every goroutine it started has ended and the parts are closed, or, if
// the drain overruns ROOST_DRAIN_TIMEOUT, with that error and without
// waiting further: the process is about to exit.
func (n *node) run(ctx context.Context) error {
	defer n.opened.close()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(n.front.serve)
	if n.debug != nil {
		g.Go(func() error {
			if err := n.debug.serve(); err != nil {
				n.log.Error("listener stopped", "listener", "debug", "err", err)
			}
			return nil
		})
		n.log.Warn("profiler on; keep this address private", "debug", n.debug.ln.Addr().String())
	}
	var tasks []task
	if n.data != nil {
		tasks = append(tasks, n.data.tasks...)
	}
	for _, t := range append(tasks, n.tasks...) {
		g.Go(func() error { return t(gctx) })
	}
	g.Go(func() error {
		<-gctx.Done()
		return n.drain()
	})
	n.tell()

	waited := make(chan error, 1)
	go func() { waited <- g.Wait() }()
	<-gctx.Done()
	select {
	case err := <-waited:
		return err
	case <-time.After(n.c.DrainTimeout):
		return fmt.Errorf("drain: not done within ROOST_DRAIN_TIMEOUT (%s)", n.c.DrainTimeout)
	}
}

// tell says where the node listens.
func (n *node) tell() {
	if n.data != nil {
		for _, l := range n.data.lines {
			fmt.Fprintln(n.stdout, l)
		}
	}
	httpAddr := displayAddr(n.front.ln.Addr())
	switch n.role {
	case roleAll:
		fmt.Fprintf(n.stdout, "Roost %s: API on http://%s, MQTT on mqtt://%s\n", roost.Version, httpAddr, displayAddr(n.data.mqttLn.Addr()))
		fmt.Fprintf(n.stdout, "Console on http://%s/ (operator pages at /admin)\n", httpAddr)
	case roleControl:
		fmt.Fprintf(n.stdout, "Roost %s control plane: API on http://%s, console on http://%s/\n", roost.Version, httpAddr, httpAddr)
	case roleData:
		fmt.Fprintf(n.stdout, "Roost %s data plane: MQTT on mqtt://%s, health and metrics on http://%s\n", roost.Version, displayAddr(n.data.mqttLn.Addr()), httpAddr)
	}
	n.log.Info("serving", "http", n.front.ln.Addr().String(), "version", roost.Version)
}

// drain ends a serving node: the data plane stops (no new connections,
// DISCONNECT 0x8B, meters flushed, the node retired), the console's
// streams end, and the HTTP server finishes its requests within the
// deadline. The stores close after, once every goroutine has ended.
func (n *node) drain() error {
	start := time.Now()
	n.log.Info("draining", "deadline", n.c.DrainTimeout)
	if n.data != nil {
		n.data.drain()
	}
	n.stopStreams()
	sctx, cancel := context.WithTimeout(context.Background(), n.c.DrainTimeout)
	defer cancel()
	err := n.front.srv.Shutdown(sctx)
	if n.debug != nil {
		n.debug.srv.Close()
	}
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	n.log.Info("drained", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// httpPort is an HTTP server on a listener of its own.
type httpPort struct {
	name string // for errors
	ln   net.Listener
	srv  *http.Server
}

// serve serves until the server is shut down or closed, which is no
// error.
func (p *httpPort) serve() error {
	if err := p.srv.Serve(p.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	return nil
}

// dataPlane is a node's MQTT side: the session store, the hub and the
// device listeners and, on a node of a fleet, the forwarding port, the
// fleet membership and the directory's change listener. Its listeners
// are bound when it opens and served by its tasks; its drain stops them.
type dataPlane struct {
	c      *config
	log    *slog.Logger
	hub    *broker.Hub
	member *cluster.Member // nil unless a node of a fleet
	// listening says the directory's changes are coming in: always in one
	// process, over Postgres on a node of a fleet.
	listening *atomic.Bool
	// stopping is set when the drain starts: a listener ending after it is
	// no failure.
	stopping  atomic.Bool
	mqttLn    net.Listener
	opened    closers
	tasks     []task
	webs      []*http.Server // the WebSocket listeners' servers
	lines     []string       // where devices connect, told once serving
	endpoints []web.Endpoint // the same, for the console
}

// openDataPlane opens the session store and the hub and binds the device
// listeners (and, for roleData, the forwarding port); a failure closes
// what was opened. The node is announced later, by announce.
func openDataPlane(ctx context.Context, role string, deps planeDeps, exporter broker.Exporter, in *inputs, httpAddr net.Addr) (_ *dataPlane, err error) {
	c, log, store := deps.c, deps.log, deps.store
	d := &dataPlane{c: c, log: log, listening: &atomic.Bool{}}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	d.listening.Store(role != roleData)
	// A data-plane node of a fleet: tenants are placed on nodes, and
	// connections reaching another node than their tenant's are forwarded.
	var forwardLn net.Listener
	if role == roleData {
		if forwardLn, err = net.Listen("tcp", c.ForwardAddr); err != nil {
			return nil, fmt.Errorf("ROOST_FORWARD_ADDR: %w", err)
		}
		d.opened.add(func() { forwardLn.Close() })
		// With sessions in Redis, the nodes' leases are there too (see
		// cluster.Leases): a paused node stops serving before its tenants
		// can be taken, and a dead one's are taken within seconds.
		var leases cluster.Leases
		if c.SessionStore == "redis" {
			rl, err := cluster.NewRedisLeases(ctx, c.RedisURL, "", 0)
			if err != nil {
				return nil, fmt.Errorf("ROOST_REDIS_URL: %w", err)
			}
			d.opened.add(func() { rl.Close() })
			leases = rl
		}
		if d.member, err = newMember(c, store, deps.adminToken, httpAddr, forwardLn.Addr(), leases, log); err != nil {
			return nil, err
		}
	}
	sessions, err := openSessions(ctx, c, log)
	if err != nil {
		return nil, err
	}
	d.opened.add(func() { sessions.Close() })
	cfg := broker.Config{
		Exporter:       exporter,
		Events:         deps.sink,
		Sessions:       sessions,
		Usage:          store,
		Directory:      store,
		Changes:        store.Changes(),
		Log:            log,
		ConnectTimeout: c.ConnectTimeout,
		IdleTimeout:    c.InstanceIdle,
		Domain:         c.MQTTDomain,
		// The drain must not fire every device's Will unless asked to.
		WillsOnShutdown: c.ShutdownWills,
	}
	if cfg.Delivery, err = c.delivery(deps.adminToken, store, log); err != nil {
		return nil, err
	}
	if d.member != nil {
		cfg.Cluster = d.member
		// A spread fleet serves every tenant on every node; otherwise a
		// tenant may widen past ROOST_FLEET_WIDEN_AT connections, with
		// its sessions in Redis and the Redis fabric.
		widen := c.FleetWidenAt > 0 && c.SessionStore == "redis" && c.FleetFabric == "redis"
		if !widen && !c.FleetSpread && c.FleetWidenAt > 0 {
			log.Info("every tenant stays on one node: tenants widen past ROOST_FLEET_WIDEN_AT only with ROOST_SESSION_STORE=redis and ROOST_FLEET_FABRIC=redis")
		}
		if c.FleetSpread || widen {
			fab, err := openFabric(ctx, c, d.member.ID(), log)
			if err != nil {
				return nil, fmt.Errorf("the fleet fabric: %w", err)
			}
			d.opened.add(func() { fab.Close() })
			cfg.Fabric, cfg.SpreadAll, cfg.WidenAt = fab, c.FleetSpread, c.FleetWidenAt
		}
	}
	// The bounds of connections not yet past CONNECT (README: Security
	// limits).
	cfg.MaxHandshakes, cfg.HandshakesPerAddress, cfg.HandshakesPerEndpoint = c.MaxHandshakes, c.HandshakesPerAddress, c.HandshakesPerEndpoint
	cfg.MaxNodeConnections = c.MaxNodeConnections
	cfg.HandshakeRatePerAddress, cfg.HandshakeBurstPerAddress = offIfZero(c.HandshakeRatePerAddress), c.HandshakeBurstPerAddress
	cfg.HandshakeRatePerEndpoint, cfg.HandshakeBurstPerEndpoint = offIfZero(c.HandshakeRatePerEndpoint), c.HandshakeBurstPerEndpoint
	hub, err := broker.New(cfg)
	if err != nil {
		return nil, err
	}
	d.hub = hub
	d.opened.add(func() { hub.Close() })

	if d.mqttLn, err = net.Listen("tcp", c.MQTTAddr); err != nil {
		return nil, fmt.Errorf("ROOST_MQTT_ADDR: %w", err)
	}
	d.opened.add(func() { d.mqttLn.Close() })
	mqttLn := d.mqttLn
	if c.proxied("mqtt") {
		mqttLn = transport.ProxyListener(mqttLn, c.ConnectTimeout)
	}
	d.tasks = append(d.tasks, func(context.Context) error {
		if err := hub.Serve(mqttLn); err != nil && !d.stopping.Load() {
			return fmt.Errorf("mqtt listener: %w", err)
		}
		return nil
	})
	d.endpoints = []web.Endpoint{{Name: "MQTT", URL: "mqtt://" + displayAddr(d.mqttLn.Addr())}}
	if err := d.listenTransports(in); err != nil {
		return nil, err
	}
	if d.member != nil {
		// Another process commits the changes: they come over Postgres.
		d.tasks = append(d.tasks, func(ctx context.Context) error {
			tenants.ListenChanges(ctx, c.DatabaseURL, store.Changes(), log, d.listening.Store)
			return nil
		})
		d.member.OnLost(hub.Evict)
		d.serveMQTT(transport.ForwardListener(forwardLn, d.member.Key(), c.ConnectTimeout), "forward")
	}
	return d, nil
}

// offIfZero is a rate setting for the broker, where 0 is its default and
// a negative rate is no bound: the setting's 0 is no bound.
func offIfZero(rate int) int {
	if rate == 0 {
		return -1
	}
	return rate
}

// serveMQTT has the hub accept device connections on ln, a listener
// besides the main one: its failure is logged, and ends nothing else.
func (d *dataPlane) serveMQTT(ln net.Listener, name string) {
	d.tasks = append(d.tasks, func(context.Context) error {
		if err := d.hub.Serve(ln); err != nil && !d.stopping.Load() {
			d.log.Error("listener stopped", "listener", name, "err", err)
		}
		return nil
	})
}

// serveWeb serves MQTT over WebSocket on ln.
func (d *dataPlane) serveWeb(ln net.Listener) {
	srv := &http.Server{Handler: transport.WebSocket(d.hub.ServeConn, d.log), ReadHeaderTimeout: d.c.ConnectTimeout, IdleTimeout: d.c.ConnectTimeout,
		ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)}
	d.webs = append(d.webs, srv)
	d.opened.add(func() { srv.Close() })
	d.tasks = append(d.tasks, func(context.Context) error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) && !d.stopping.Load() {
			d.log.Error("listener stopped", "listener", "websocket", "err", err)
		}
		return nil
	})
}

// listenTransports binds the device listeners besides plain TCP that the
// configuration asks for: MQTT over TLS, WebSocket and WebSocket over TLS
// (one TLS port serves MQTT and WebSocket when both are given the same
// address).
func (d *dataPlane) listenTransports(in *inputs) error {
	c, hub := d.c, d.hub
	// The hub checks each ClientHello against the endpoints' attempt rate
	// before the key exchange.
	var tlsConfig *tls.Config
	if in.tls != nil {
		tlsConfig = hub.TLSConfig(in.tls)
	}
	listen := func(addr, name, setting string) (net.Listener, error) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", setting, err)
		}
		d.opened.add(func() { l.Close() })
		if c.proxied(name) {
			l = transport.ProxyListener(l, c.ConnectTimeout)
		}
		return l, nil
	}
	// The WebSocket listeners' connections, and those of a TLS port shared
	// with them, do work (TLS, HTTP) before the hub sees them: they pass a
	// gate below TLS that counts them as in handshake from accept. A
	// connection kept alive without an upgrade stays counted, for at most
	// the CONNECT timeout.
	if tlsAddr := c.mqttTLSAddr(); tlsAddr != "" {
		l, err := listen(tlsAddr, "mqtts", "ROOST_MQTT_TLS_ADDR")
		if err != nil {
			return err
		}
		if c.WSSAddr == tlsAddr {
			m, w := transport.Split(tls.NewListener(hub.Gate(l), tlsConfig), c.ConnectTimeout)
			d.serveMQTT(m, "mqtts")
			d.serveWeb(w)
			d.lines = append(d.lines, fmt.Sprintf("MQTT over TLS on mqtts://%[1]s and over WebSocket on wss://%[1]s%[2]s%[3]s", displayAddr(l.Addr()), transport.WebSocketPath, in.trust))
			d.endpoints = append(d.endpoints, web.Endpoint{Name: "MQTT over TLS", URL: "mqtts://" + displayAddr(l.Addr())},
				web.Endpoint{Name: "WebSocket over TLS", URL: "wss://" + displayAddr(l.Addr()) + transport.WebSocketPath})
		} else {
			d.serveMQTT(tls.NewListener(l, tlsConfig), "mqtts")
			d.lines = append(d.lines, fmt.Sprintf("MQTT over TLS on mqtts://%s%s", displayAddr(l.Addr()), in.trust))
			d.endpoints = append(d.endpoints, web.Endpoint{Name: "MQTT over TLS", URL: "mqtts://" + displayAddr(l.Addr())})
		}
	}
	if c.WSSAddr != "" && c.WSSAddr != c.mqttTLSAddr() {
		l, err := listen(c.WSSAddr, "wss", "ROOST_WSS_ADDR")
		if err != nil {
			return err
		}
		d.serveWeb(tls.NewListener(hub.Gate(l), tlsConfig))
		d.lines = append(d.lines, fmt.Sprintf("MQTT over WebSocket on wss://%s%s%s", displayAddr(l.Addr()), transport.WebSocketPath, in.trust))
		d.endpoints = append(d.endpoints, web.Endpoint{Name: "WebSocket over TLS", URL: "wss://" + displayAddr(l.Addr()) + transport.WebSocketPath})
	}
	if c.WSAddr != "" {
		l, err := listen(c.WSAddr, "ws", "ROOST_WS_ADDR")
		if err != nil {
			return err
		}
		d.serveWeb(hub.Gate(l))
		d.lines = append(d.lines, fmt.Sprintf("MQTT over WebSocket on ws://%s%s", displayAddr(l.Addr()), transport.WebSocketPath))
		d.endpoints = append(d.endpoints, web.Endpoint{Name: "WebSocket", URL: "ws://" + displayAddr(l.Addr()) + transport.WebSocketPath})
	}
	return nil
}

// announce makes a node of a fleet known to the others (nothing to do in
// one process). From here on, closing retires it.
func (d *dataPlane) announce(ctx context.Context) error {
	if d.member == nil {
		return nil
	}
	if err := d.member.Start(ctx); err != nil {
		return err
	}
	d.opened.add(func() {
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.member.Retire(rctx)
	})
	return nil
}

// drain stops the data plane in the order the fleet needs: the node marked
// draining (other nodes wait for its tenants until it retires, so that
// none starts before its sessions are stored), no new connections, the
// brokers closed (DISCONNECT 0x8B, sessions stored, meters flushed), then
// the node retired. The tasks serving its listeners end with it.
func (d *dataPlane) drain() {
	d.stopping.Store(true)
	if d.member != nil {
		d.member.Drain(context.Background())
	}
	for _, srv := range d.webs {
		srv.Close()
	}
	d.hub.Close()
	if d.member != nil {
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := d.member.Retire(rctx); err != nil {
			d.log.Warn("retire this data-plane node: other nodes take its tenants over once it is taken for dead", "err", err)
		}
		cancel()
	}
}

// close releases what the data plane opened; after a drain, what is left
// to close is the session store (a second retire or hub close is
// harmless).
func (d *dataPlane) close() { d.opened.close() }

// openFabric opens what carries a spread fleet's messages between nodes
// (ROOST_FLEET_FABRIC).
func openFabric(ctx context.Context, c *config, node string, log *slog.Logger) (interface {
	fabric.Node
	Close() error
}, error) {
	if c.FleetFabric == "kafka" {
		return kfabric.New(ctx, kfabric.Config{Brokers: c.kafkaBrokers(), Node: node, Log: log})
	}
	return fabric.New(ctx, fabric.Config{URL: c.RedisURL, Node: node, Log: log})
}

// delivery configures the outbox's delivery of rules with a destination:
// the same sender as the API's send test, and the sealing key every node
// derives from the operator token.
func (c *config) delivery(adminToken string, rules *tenants.Store, log *slog.Logger) (*broker.Delivery, error) {
	sender, err := c.webhookSender(log)
	if err != nil {
		return nil, err
	}
	sealer, err := c.sealer(adminToken)
	if err != nil {
		return nil, err
	}
	return &broker.Delivery{Rules: rules, Sealer: sealer, Sender: sender, Batch: c.WebhookBatch,
		Policy: dataout.Policy{Horizon: c.WebhookRetryHorizon}}, nil
}
