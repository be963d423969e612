package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/roosthub/roost"

	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/billing"
	"github.com/roosthub/roost/broker"
	hbasestore "github.com/roosthub/roost/broker/store/hbase"
	memstore "github.com/roosthub/roost/broker/store/memory"
	pebblestore "github.com/roosthub/roost/broker/store/pebble"
	redisstore "github.com/roosthub/roost/broker/store/redis"
	"github.com/roosthub/roost/cluster"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/kafkaexport"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/transport"
	"github.com/roosthub/roost/web"
)

func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// openStore opens and migrates the directory.
func openStore(ctx context.Context, c *config, log *slog.Logger) (*tenants.Store, error) {
	store, err := tenants.Open(ctx, c.DatabaseURL, c.DataDir)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	applied, err := store.Migrate(ctx)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	for _, m := range applied {
		log.Info("applied migration", "migration", m)
	}
	return store, nil
}

// Roles of the one binary: serve runs everything in one process; the
// control plane (API, console, billing) and the data plane (MQTT listeners,
// tenant brokers) can also run apart, sharing Postgres.
const (
	roleAll     = "serve"
	roleControl = "controlplane"
	roleData    = "dataplane"
)

func serve(ctx context.Context, role string, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, err := parseConfig(role, args, getenv)
	if err != nil {
		return err
	}
	if err := c.validateRole(role); err != nil {
		return err
	}
	runsData, runsControl := role != roleControl, role != roleData
	log := newLogger(c.LogFormat, stderr).With("role", role)
	if role == roleData && c.SessionStore == "embedded" {
		log.Warn("persistent sessions are on this node's disk: another data-plane node cannot take them over; use ROOST_SESSION_STORE=redis or hbase with more than one node")
	}
	store, err := openStore(ctx, c, log)
	if err != nil {
		return err
	}
	defer store.Close()
	log.Info("store ready", "database", store.Dialect(), "sessions", c.SessionStore)
	if err := loadPlans(c, store); err != nil {
		return err
	}

	adminToken, generated, err := adminToken(c)
	if err != nil {
		return err
	}
	if generated {
		fmt.Fprintf(stdout, "Generated the operator token (kept in %s; shown only now):\n  %s\n",
			filepath.Join(c.DataDir, adminTokenFile), adminToken)
	}
	key, err := store.Setting(ctx, "session_signing_key", func() string { return randomToken(32) })
	if err != nil {
		return err
	}
	signingKey, err := base64.RawURLEncoding.DecodeString(key)
	if err != nil {
		return fmt.Errorf("session signing key in the store is damaged: %w", err)
	}
	recent := events.NewMemory(1000)
	var sink events.Sink = recent
	var exporter broker.Exporter
	if brokers := c.kafkaBrokers(); len(brokers) > 0 {
		k, err := events.NewKafka(events.KafkaConfig{Brokers: brokers, Log: log})
		if err != nil {
			return fmt.Errorf("ROOST_KAFKA_BROKERS: %w", err)
		}
		defer k.Close()
		sink = events.Tee{recent, k}
		if runsData {
			x, err := kafkaexport.New(brokers)
			if err != nil {
				return fmt.Errorf("ROOST_KAFKA_BROKERS: %w", err)
			}
			defer x.Close()
			exporter = x
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)})

	ln, err := net.Listen("tcp", c.HTTPAddr)
	if err != nil {
		return fmt.Errorf("ROOST_HTTP_ADDR: %w", err)
	}
	defer ln.Close()
	// A data-plane node of a fleet: tenants are placed on nodes, and
	// connections reaching another node than their tenant's are forwarded.
	var member *cluster.Member
	var forwardLn net.Listener
	if role == roleData {
		if forwardLn, err = net.Listen("tcp", c.ForwardAddr); err != nil {
			return fmt.Errorf("ROOST_FORWARD_ADDR: %w", err)
		}
		defer forwardLn.Close()
		if member, err = newMember(ctx, c, store, adminToken, ln.Addr(), forwardLn.Addr(), log); err != nil {
			return err
		}
		// A start that fails from here on leaves no node behind (the
		// drain retires it first on the way out; twice is harmless).
		defer func() {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			member.Retire(rctx)
		}()
	}
	var hub *broker.Hub
	if runsData {
		sessions, err := openSessions(ctx, c, log)
		if err != nil {
			return err
		}
		defer sessions.Close()
		cfg := broker.Config{
			Exporter:       exporter,
			Events:         sink,
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
		if member != nil {
			cfg.Cluster = member
		}
		// The bounds of connections not yet past CONNECT (README: Security
		// limits).
		cfg.MaxHandshakes, cfg.HandshakesPerAddress, cfg.HandshakesPerEndpoint = c.MaxHandshakes, c.HandshakesPerAddress, c.HandshakesPerEndpoint
		hub, err = broker.New(cfg)
		if err != nil {
			return err
		}
		defer hub.Close()
		reg.MustRegister(hub.Collector(broker.DefaultTopTenants))
	}
	listening := &atomic.Bool{}
	listening.Store(true)
	if role == roleData {
		// Another process commits the changes: they come over Postgres.
		listening.Store(false)
		lctx, stopListening := context.WithCancel(ctx)
		defer stopListening()
		go tenants.ListenChanges(lctx, c.DatabaseURL, store.Changes(), log, listening.Store)
		member.OnLost(hub.Evict)
		go hub.Serve(transport.ForwardListener(forwardLn, member.Key(), c.ConnectTimeout))
	}

	var mqttLn net.Listener
	if runsData {
		mqttLn, err = net.Listen("tcp", c.MQTTAddr)
		if err != nil {
			return fmt.Errorf("ROOST_MQTT_ADDR: %w", err)
		}
	}
	if c.DebugAddr != "" {
		debugLn, err := net.Listen("tcp", c.DebugAddr)
		if err != nil {
			if mqttLn != nil {
				mqttLn.Close()
			}
			return fmt.Errorf("ROOST_DEBUG_ADDR: %w", err)
		}
		debug := &http.Server{Handler: debugMux(), ReadHeaderTimeout: 10 * time.Second}
		go debug.Serve(debugLn)
		defer debug.Close()
		log.Warn("profiler on; keep this address private", "debug", debugLn.Addr().String())
	}
	mqttErr := make(chan error, 1)
	// Where devices connect, for the console: the configured endpoints, or
	// this process's own listeners.
	endpoints, err := c.deviceEndpoints()
	if err != nil {
		return err
	}
	if runsData {
		if c.proxied("mqtt") {
			mqttLn = transport.ProxyListener(mqttLn, c.ConnectTimeout)
		}
		go func() { mqttErr <- hub.Serve(mqttLn) }()
		stopTransports, more, err := startTransports(c, log, hub, stdout)
		if err != nil {
			hub.Close()
			return err
		}
		defer stopTransports()
		if len(endpoints) == 0 {
			endpoints = append([]web.Endpoint{{Name: "MQTT", URL: "mqtt://" + displayAddr(mqttLn.Addr())}}, more...)
		}
	}
	// What the HTTP port serves: the API and the console, or a data-plane
	// node's health, metrics and internal API.
	var handler http.Handler
	deps := planeDeps{c: c, log: log, store: store, hub: hub, recent: recent, sink: sink, adminToken: adminToken, metrics: metrics}
	if runsControl {
		if handler, err = deps.controlHandler(ctx, signingKey, displayAddr(ln.Addr()), endpoints); err != nil {
			return err
		}
	} else {
		handler = deps.dataHandler(listening)
	}

	// Requests' contexts end when the drain starts, so that the console's
	// live streams do not hold the shutdown up.
	streams, stopStreams := context.WithCancel(context.Background())
	defer stopStreams()
	httpServer := &http.Server{
		BaseContext:       func(net.Listener) context.Context { return streams },
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- httpServer.Serve(ln) }()
	switch role {
	case roleAll:
		fmt.Fprintf(stdout, "Roost %s: API on http://%s, MQTT on mqtt://%s\n", roost.Version, displayAddr(ln.Addr()), displayAddr(mqttLn.Addr()))
		fmt.Fprintf(stdout, "Console on http://%s/ (operator pages at /admin)\n", displayAddr(ln.Addr()))
	case roleControl:
		fmt.Fprintf(stdout, "Roost %s control plane: API on http://%s, console on http://%s/\n", roost.Version, displayAddr(ln.Addr()), displayAddr(ln.Addr()))
	case roleData:
		fmt.Fprintf(stdout, "Roost %s data plane: MQTT on mqtt://%s, health and metrics on http://%s\n", roost.Version, displayAddr(mqttLn.Addr()), displayAddr(ln.Addr()))
	}
	log.Info("serving", "http", ln.Addr().String(), "version", roost.Version)

	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case err := <-mqttErr:
		httpServer.Close()
		return fmt.Errorf("mqtt listener: %w", err)
	case <-ctx.Done():
	}
	return drain(c.DrainTimeout, log, func() {
		if member != nil {
			// Other nodes wait for this node's tenants until it retires,
			// so that none starts before its sessions are stored.
			member.Drain(context.Background())
		}
		if hub != nil {
			hub.Close()
		}
		if member != nil {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := member.Retire(rctx); err != nil {
				log.Warn("retire this data-plane node: other nodes take its tenants over once it is taken for dead", "err", err)
			}
			cancel()
		}
		stopStreams()
	}, httpServer, errc)
}

// drain ends a serving process: stop (the MQTT side: no new connections,
// DISCONNECT 0x8B, meters flushed; the console's streams ended), then let
// the HTTP server finish its requests, all within the deadline. The stores
// flush as serve returns.
func drain(deadline time.Duration, log *slog.Logger, stop func(), httpServer *http.Server, errc <-chan error) error {
	start := time.Now()
	log.Info("draining", "deadline", deadline)
	drained := make(chan error, 1)
	go func() {
		stop()
		sctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		err := httpServer.Shutdown(sctx)
		if err == nil {
			if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
				err = serr
			}
		}
		drained <- err
	}()
	select {
	case err := <-drained:
		if err != nil {
			return fmt.Errorf("drain: %w", err)
		}
		log.Info("drained", "took", time.Since(start).Round(time.Millisecond))
		return nil
	case <-time.After(deadline):
		return fmt.Errorf("drain: not done within ROOST_DRAIN_TIMEOUT (%s)", deadline)
	}
}

// advertised is an address other hosts can reach this one at: the
// listener's, with a wildcard host replaced by the host name.
func advertised(a net.Addr) string {
	host, err := os.Hostname()
	if err != nil {
		host = "localhost"
	}
	return withHost(a, host)
}

// pruneUsage deletes usage older than the retention period, hourly.
func pruneUsage(ctx context.Context, store *tenants.Store, retention time.Duration, log *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := store.PruneUsage(ctx, time.Now().Add(-retention)); err != nil && ctx.Err() == nil {
			log.Warn("prune usage", "err", err)
		} else if n > 0 {
			log.Info("pruned usage past its retention", "rows", n, "retention", retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// planeDeps is what the two planes' HTTP sides are built from.
type planeDeps struct {
	c          *config
	log        *slog.Logger
	store      *tenants.Store
	hub        *broker.Hub // nil on a control plane running apart
	recent     *events.Memory
	sink       events.Sink
	adminToken string
	metrics    http.Handler
}

// controlHandler is the control plane's HTTP side: the API and the
// console, with billing and usage pruning running until ctx ends. Without
// a hub in process it reaches the data-plane nodes.
func (d planeDeps) controlHandler(ctx context.Context, signingKey []byte, localAddr string, endpoints []web.Endpoint) (http.Handler, error) {
	c, log := d.c, d.log
	bill, err := newBilling(c, d.store, d.sink, log, "http://"+localAddr)
	if err != nil {
		return nil, err
	}
	if bill.Enabled() {
		go bill.Run(ctx, 30*time.Second)
	}
	go pruneUsage(ctx, d.store, c.UsageRetention, log)
	var dp interface {
		api.DataPlane
		web.DataPlane
	} = d.hub
	var evs api.EventLog = d.recent
	if d.hub == nil {
		// Running apart: the data-plane nodes answer for themselves, and
		// hold the devices' events.
		remote := cluster.NewRemote(d.store, d.adminToken, log)
		dp, evs = remote, cluster.Events{Remote: remote, Local: d.recent}
	}
	// One auth front for the API and the console: one set of sessions and
	// throttles, whichever a person signs in through.
	if c.PasswordHashes > 0 {
		d.store.SetPasswordHashes(c.PasswordHashes)
	}
	ac := c.authConfig()
	ac.Store, ac.SigningKey, ac.AdminToken, ac.Log = d.store, signingKey, d.adminToken, log
	front, err := auth.New(ac)
	if err != nil {
		return nil, err
	}
	srv, err := api.New(api.Config{Store: d.store, Log: log, AdminToken: d.adminToken, SigningKey: signingKey, TokenTTL: c.TokenTTL,
		Events: evs, Billing: bill, Metrics: d.metrics, DataPlane: dp, Auth: front})
	if err != nil {
		return nil, err
	}
	con, err := web.New(web.Config{Store: d.store, DataPlane: dp, Billing: bill, Events: evs, Log: log, SigningKey: signingKey,
		TokenTTL: c.TokenTTL, AdminToken: d.adminToken, SecureCookies: strings.HasPrefix(c.PublicURL, "https://"), Endpoints: endpoints, Auth: front})
	if err != nil {
		return nil, err
	}
	return frontDoor(srv, con), nil
}

// dataHandler is a data-plane node's HTTP side: health, readiness,
// metrics and the internal API control planes and other nodes call.
func (d planeDeps) dataHandler(listening *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	// One check of the operator token (wrong ones throttled per address)
	// for the internal API and /metrics.
	op := auth.NewOperator(d.adminToken, nil, d.log)
	mux.Handle(cluster.Prefix+"/", cluster.ServeWith(d.hub, d.recent, op, d.log))
	mux.Handle("/", dataPlaneMux(d.store, listening, op, d.metrics))
	return mux
}

// newMember announces this data-plane node to the fleet: its internal API
// at ROOST_NODE_URL (or this host's name and the HTTP port), and its
// forwarding address on the same host.
func newMember(ctx context.Context, c *config, store *tenants.Store, token string, httpAddr, forwardAddr net.Addr, log *slog.Logger) (*cluster.Member, error) {
	nodeURL := c.NodeURL
	if nodeURL == "" {
		nodeURL = "http://" + advertised(httpAddr)
	}
	u, err := url.Parse(nodeURL)
	if err != nil {
		return nil, fmt.Errorf("ROOST_NODE_URL: %w", err)
	}
	host, _ := os.Hostname()
	id := host + "-" + randomToken(6)
	fwd := withHost(forwardAddr, u.Hostname())
	if tcp, ok := forwardAddr.(*net.TCPAddr); ok && !tcp.IP.IsUnspecified() {
		fwd = forwardAddr.String() // bound to one address: that one
	}
	m := cluster.NewMember(cluster.MemberConfig{Store: store, ID: id, URL: nodeURL, ForwardAddr: fwd, Token: token, Log: log})
	if err := m.Start(ctx); err != nil {
		return nil, err
	}
	log.Info("data-plane node", "id", id, "internal_url", nodeURL, "forward_addr", fwd)
	return m, nil
}

// dataPlaneMux is a data-plane node's HTTP side: health, readiness (the
// store answers and changes are coming in) and metrics for the operator.
func dataPlaneMux(store *tenants.Store, listening *atomic.Bool, op *auth.Operator, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		switch {
		case store.Ping(ctx) != nil:
			http.Error(w, "the database does not answer", http.StatusServiceUnavailable)
		case !listening.Load():
			http.Error(w, "not listening for directory changes", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ready")
		}
	})
	mux.Handle("GET /metrics", op.Require(metrics))
	return mux
}

// frontDoor sends the REST API's paths (api.Owns) to the API and
// everything else to the console.
func frontDoor(apiHandler, console http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if api.Owns(r.URL.Path) {
			apiHandler.ServeHTTP(w, r)
			return
		}
		console.ServeHTTP(w, r)
	})
}

// loadPlans replaces the built-in plans with the plans file's, if any.
func loadPlans(c *config, store *tenants.Store) error {
	if c.PlansFile == "" {
		return nil
	}
	f, err := os.Open(c.PlansFile)
	if err != nil {
		return fmt.Errorf("ROOST_PLANS_FILE: %w", err)
	}
	defer f.Close()
	plans, err := tenants.LoadPlans(f)
	if err != nil {
		return fmt.Errorf("ROOST_PLANS_FILE: %s: %w", c.PlansFile, err)
	}
	store.SetPlans(plans)
	return nil
}

// newBilling returns the billing service: off without a Stripe key.
func newBilling(c *config, store *tenants.Store, sink events.Sink, log *slog.Logger, localURL string) (*billing.Service, error) {
	cfg := billing.Config{Store: store, Events: sink, Log: log, WebhookSecret: c.StripeWebhookSecret,
		MeterEvent: c.StripeMeterEvent, Grace: c.BillingGrace, ConsoleURL: strings.TrimSuffix(cmp.Or(c.PublicURL, localURL), "/")}
	if c.StripeKey == "" {
		log.Info("billing off (no ROOST_STRIPE_KEY): tenants stay on free or on the plan the operator sets")
		return billing.New(cfg)
	}
	priced := 0
	for _, p := range store.Plans() {
		if p.StripePrice != "" {
			priced++
		}
	}
	if priced == 0 {
		log.Warn("billing on, but no plan has a Stripe price: set them in ROOST_PLANS_FILE (docs/billing.md)")
	}
	cfg.Stripe = billing.NewStripe(c.StripeKey, c.StripeAPIURL)
	log.Info("billing on", "plans_with_prices", priced, "meter_event", c.StripeMeterEvent, "grace", c.BillingGrace)
	return billing.New(cfg)
}

// startTransports opens the device listeners besides plain TCP that the
// configuration asks for: MQTT over TLS, WebSocket and WebSocket over TLS
// (one TLS port serves MQTT and WebSocket when both are given the same
// address), and prints where they are.
func startTransports(c *config, log *slog.Logger, hub *broker.Hub, stdout io.Writer) (stop func(), endpoints []web.Endpoint, err error) {
	var closers []func()
	stop = func() {
		for _, f := range closers {
			f()
		}
	}
	fail := func(setting string, err error) (func(), []web.Endpoint, error) {
		stop()
		return nil, nil, fmt.Errorf("%s: %w", setting, err)
	}
	var tlsConf *tls.Config
	trust := ""
	if c.tlsListeners() {
		certFile, keyFile := c.TLSCert, c.TLSKey
		if c.DevTLS {
			files, err := transport.DevCertificates(filepath.Join(c.DataDir, "tls"))
			if err != nil {
				return fail("ROOST_DEV_TLS", err)
			}
			certFile, keyFile, trust = files.Cert, files.Key, " (clients trust "+files.CA+")"
		}
		cert, err := transport.LoadCertificate(certFile, keyFile, log)
		if err != nil {
			return fail("ROOST_TLS_CERT", err)
		}
		tlsConf = transport.ServerConfig(cert)
	}
	// The WebSocket listeners' connections, and those of a TLS port shared
	// with them, do work (TLS, HTTP) before the hub sees them: they pass a
	// gate below TLS that counts them as in handshake from accept. A
	// connection kept alive without an upgrade stays counted, for at most
	// the CONNECT timeout.
	serveWeb := func(ln net.Listener) {
		srv := &http.Server{Handler: transport.WebSocket(hub.ServeConn, log), ReadHeaderTimeout: c.ConnectTimeout, IdleTimeout: c.ConnectTimeout,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go srv.Serve(ln)
		closers = append(closers, func() { srv.Close() })
	}
	serveMQTT := func(ln net.Listener, name string) {
		go func() {
			if err := hub.Serve(ln); err != nil {
				log.Error("listener stopped", "listener", name, "err", err)
			}
		}()
		closers = append(closers, func() { ln.Close() })
	}
	listen := func(addr, name string) (net.Listener, error) {
		l, err := net.Listen("tcp", addr)
		if err == nil && c.proxied(name) {
			l = transport.ProxyListener(l, c.ConnectTimeout)
		}
		return l, err
	}
	if tlsAddr := c.mqttTLSAddr(); tlsAddr != "" {
		l, err := listen(tlsAddr, "mqtts")
		if err != nil {
			return fail("ROOST_MQTT_TLS_ADDR", err)
		}
		if c.WSSAddr == tlsAddr {
			m, w := transport.Split(tls.NewListener(hub.Gate(l), tlsConf), c.ConnectTimeout)
			serveMQTT(m, "mqtts")
			serveWeb(w)
			fmt.Fprintf(stdout, "MQTT over TLS on mqtts://%[1]s and over WebSocket on wss://%[1]s%[2]s%[3]s\n", displayAddr(l.Addr()), transport.WebSocketPath, trust)
			endpoints = append(endpoints, web.Endpoint{Name: "MQTT over TLS", URL: "mqtts://" + displayAddr(l.Addr())},
				web.Endpoint{Name: "WebSocket over TLS", URL: "wss://" + displayAddr(l.Addr()) + transport.WebSocketPath})
		} else {
			serveMQTT(tls.NewListener(l, tlsConf), "mqtts")
			fmt.Fprintf(stdout, "MQTT over TLS on mqtts://%s%s\n", displayAddr(l.Addr()), trust)
			endpoints = append(endpoints, web.Endpoint{Name: "MQTT over TLS", URL: "mqtts://" + displayAddr(l.Addr())})
		}
	}
	if c.WSSAddr != "" && c.WSSAddr != c.mqttTLSAddr() {
		l, err := listen(c.WSSAddr, "wss")
		if err != nil {
			return fail("ROOST_WSS_ADDR", err)
		}
		serveWeb(tls.NewListener(hub.Gate(l), tlsConf))
		fmt.Fprintf(stdout, "MQTT over WebSocket on wss://%s%s%s\n", displayAddr(l.Addr()), transport.WebSocketPath, trust)
		endpoints = append(endpoints, web.Endpoint{Name: "WebSocket over TLS", URL: "wss://" + displayAddr(l.Addr()) + transport.WebSocketPath})
	}
	if c.WSAddr != "" {
		l, err := listen(c.WSAddr, "ws")
		if err != nil {
			return fail("ROOST_WS_ADDR", err)
		}
		serveWeb(hub.Gate(l))
		fmt.Fprintf(stdout, "MQTT over WebSocket on ws://%s%s\n", displayAddr(l.Addr()), transport.WebSocketPath)
		endpoints = append(endpoints, web.Endpoint{Name: "WebSocket", URL: "ws://" + displayAddr(l.Addr()) + transport.WebSocketPath})
	}
	return stop, endpoints, nil
}

// debugMux serves Go's profiler, and POST /debug/gc, which collects garbage
// and returns freed memory to the system (benchmarks read resident memory
// after it).
func debugMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /debug/gc", func(w http.ResponseWriter, _ *http.Request) {
		debug.FreeOSMemory()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// displayAddr turns a wildcard listen address into one a user can open.
func displayAddr(a net.Addr) string { return withHost(a, "localhost") }

// withHost is a listener's address with a wildcard host (":8080")
// replaced by host.
func withHost(a net.Addr, host string) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return a.String()
	}
	return net.JoinHostPort(host, fmt.Sprint(tcp.Port))
}

// openSessions opens the session store the configuration names.
func openSessions(ctx context.Context, c *config, log *slog.Logger) (broker.SessionStore, error) {
	switch c.SessionStore {
	case "memory":
		log.Warn("sessions are kept in memory only: a restart loses persistent sessions and retained messages")
		return memstore.New(), nil
	case "redis":
		s, err := redisstore.New(ctx, redisstore.Config{URL: c.RedisURL})
		if err != nil {
			return nil, fmt.Errorf("ROOST_REDIS_URL: %w", err)
		}
		return s, nil
	case "hbase":
		s, err := hbasestore.New(ctx, hbasestore.Config{URL: c.HBaseURL})
		if err != nil {
			return nil, fmt.Errorf("ROOST_HBASE_URL: %w", err)
		}
		return s, nil
	}
	s, err := pebblestore.New(pebblestore.Config{Dir: filepath.Join(c.DataDir, "sessions")})
	if err != nil {
		return nil, fmt.Errorf("ROOST_DATA_DIR: %w", err)
	}
	return s, nil
}

const adminTokenFile = "admin-token"

// adminToken returns the configured operator token, or the one kept in the
// data dir, generating and keeping one on first start.
func adminToken(c *config) (token string, generated bool, err error) {
	if c.AdminToken != "" {
		return c.AdminToken, false, nil
	}
	path := filepath.Join(c.DataDir, adminTokenFile)
	b, err := os.ReadFile(path)
	if err == nil {
		t := strings.TrimSpace(string(b))
		if len(t) < 16 {
			return "", false, fmt.Errorf("%s: the kept operator token is too short; delete the file to generate a new one", path)
		}
		return t, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("read operator token: %w", err)
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return "", false, fmt.Errorf("ROOST_DATA_DIR: %w", err)
	}
	t := "rop_" + randomToken(32)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("keep operator token: %w", err)
	}
	if _, err := f.WriteString(t + "\n"); err != nil {
		f.Close()
		return "", false, fmt.Errorf("keep operator token: %w", err)
	}
	return t, true, f.Close()
}

func randomToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func migrate(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	c, err := parseConfig("migrate", args, getenv)
	if err != nil {
		return err
	}
	store, err := tenants.Open(ctx, c.DatabaseURL, c.DataDir)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer store.Close()
	applied, err := store.Migrate(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if len(applied) == 0 {
		fmt.Fprintln(stdout, "The schema is up to date.")
	}
	for _, m := range applied {
		fmt.Fprintln(stdout, "applied", m)
	}
	return nil
}

func version(stdout io.Writer) error {
	fmt.Fprintln(stdout, "roost", roost.Version)
	return nil
}
