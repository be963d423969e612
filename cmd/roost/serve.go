package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/roosthub/roost/internal/health"
	"github.com/roosthub/roost/mail"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

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
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
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

// serve runs one role until ctx ends: it checks every setting and reads
// every file one names, then opens the role's parts (a failure closes
// what was opened: no listener stays bound, no node stays announced), then
// runs them until ctx ends or one fails (node.run).
func serve(ctx context.Context, role string, args []string, getenv func(string) string, stdout, stderr io.Writer) (err error) {
	c, err := parseConfig(role, args, getenv)
	if err != nil {
		return err
	}
	if err := c.validateRole(role); err != nil {
		return err
	}
	log := newLogger(c.LogFormat, stderr).With("role", role)
	// A start that fails leaves nothing behind: a data dir it made goes
	// again (startNode has closed what it opened in it), and a generated
	// operator token is printed only once the node is up (startNode).
	if _, statErr := os.Stat(c.DataDir); errors.Is(statErr, fs.ErrNotExist) {
		defer func() {
			if err != nil {
				os.RemoveAll(c.DataDir)
			}
		}()
	}
	in, err := readInputs(c, log)
	if err != nil {
		return err
	}
	n, err := startNode(ctx, role, c, in, log, stdout)
	if err != nil {
		return err
	}
	return n.run(ctx)
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
// console, and the work that runs beside them until their context ends
// (billing, usage pruning). Without a hub in process it reaches the
// data-plane nodes.
func (d planeDeps) controlHandler(signingKey []byte, localAddr string, endpoints []web.Endpoint) (http.Handler, []task, error) {
	c, log := d.c, d.log
	var dp dataplane.DataPlane = d.hub
	var publish func(context.Context, events.Event) error
	if d.hub == nil {
		// Running apart: the data-plane nodes answer for themselves (and
		// store their devices' events, as every node does).
		remote := cluster.NewRemote(d.store, d.adminToken, log)
		dp, publish = remote, remote.PublishEvent
	} else {
		publish = d.hub.PublishEvent
	}
	// Billing's events are stored here and relayed to the tenant's broker
	// (here or on its home node), for its rules and $events topics.
	relay := events.NewRelay(publish, log)
	bill, err := newBilling(c, d.store, events.Tee{d.sink, relay}, log, "http://"+localAddr)
	if err != nil {
		relay.Close()
		return nil, nil, err
	}
	tasks := []task{func(ctx context.Context) error { pruneUsage(ctx, d.store, c.UsageRetention, log); return nil }}
	if bill.Enabled() {
		tasks = append(tasks, func(ctx context.Context) error { bill.Run(ctx, 30*time.Second); return nil })
	}
	tasks = append(tasks, func(ctx context.Context) error { pruneEvents(ctx, d.store, eventPruneEvery, log); return nil })
	tasks = append(tasks, func(ctx context.Context) error { <-ctx.Done(); relay.Close(); return nil })
	// One auth front for the API and the console: one set of sessions and
	// throttles, whichever a person signs in through.
	if c.PasswordHashes > 0 {
		d.store.SetPasswordHashes(c.PasswordHashes)
	}
	sealer, err := c.sealer(d.adminToken)
	if err != nil {
		return nil, nil, err
	}
	ac := c.authConfig()
	ac.Store, ac.SigningKey, ac.AdminToken, ac.Log, ac.Sealer = d.store, signingKey, d.adminToken, log, sealer
	ac.Mailer, err = mail.New(c.SMTPURL, c.DataDir, c.MailFrom, log.With("part", "mail"))
	if err != nil {
		return nil, nil, err
	}
	ac.PublicURL = strings.TrimSuffix(cmp.Or(c.PublicURL, "http://"+localAddr), "/")
	front, err := auth.New(ac)
	if err != nil {
		return nil, nil, err
	}
	// The mails being sent when the process stops are waited for.
	tasks = append(tasks, func(ctx context.Context) error { <-ctx.Done(); front.Close(); return nil })
	tasks = append(tasks, func(ctx context.Context) error {
		resealSecrets(ctx, sealer, d.store, front, resealEvery, log)
		return nil
	})
	hooks, err := c.webhookSender(log)
	if err != nil {
		return nil, nil, err
	}
	srv, err := api.New(api.Config{Store: d.store, Log: log, AdminToken: d.adminToken, SigningKey: signingKey, TokenTTL: c.TokenTTL,
		Billing: bill, Metrics: d.metrics, DataPlane: dp, Auth: front, Webhooks: hooks, Sealer: sealer,
		OperatorKafka: len(c.kafkaBrokers()) > 0})
	if err != nil {
		return nil, nil, err
	}
	con, err := web.New(web.Config{Store: d.store, DataPlane: dp, Billing: bill, Log: log, SigningKey: signingKey,
		TokenTTL: c.TokenTTL, AdminToken: d.adminToken, SecureCookies: strings.HasPrefix(c.PublicURL, "https://"), Endpoints: endpoints, Auth: front, Webhooks: hooks, Sealer: sealer,
		OperatorKafka: len(c.kafkaBrokers()) > 0})
	if err != nil {
		return nil, nil, err
	}
	return frontDoor(srv, con), tasks, nil
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

// newMember is this data-plane node's membership of the fleet, not yet
// announced: its internal API at ROOST_NODE_URL (or this host's name and
// the HTTP port), and its forwarding address on the same host.
func newMember(c *config, store *tenants.Store, token string, httpAddr, forwardAddr net.Addr, leases cluster.Leases, log *slog.Logger) (*cluster.Member, error) {
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
	log.Info("data-plane node", "id", id, "internal_url", nodeURL, "forward_addr", fwd)
	return cluster.NewMember(cluster.MemberConfig{Store: store, ID: id, URL: nodeURL, ForwardAddr: fwd, Token: token, Leases: leases, Log: log}), nil
}

// dataPlaneMux is a data-plane node's HTTP side: health, readiness (the
// store answers and changes are coming in) and metrics for the operator.
func dataPlaneMux(store *tenants.Store, listening *atomic.Bool, op *auth.Operator, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	// Asked without a token: one ping a second serves every asker.
	ping := health.Cache(func(ctx context.Context) error { return store.Ping(ctx) }, time.Second, 2*time.Second)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		switch {
		case ping.Check(ctx) != nil:
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
	if iv := c.storeSyncInterval(); iv > 0 {
		log.Info("the embedded session store fsyncs on an interval: a crash of the machine loses what was acknowledged in the last one", "interval", iv)
	} else if procs := runtime.GOMAXPROCS(0); procs < syncProcs && os.Getenv("GOMAXPROCS") == "" {
		log.Info("GOMAXPROCS raised for the embedded session store's fsyncs (set GOMAXPROCS to choose)", "from", procs, "to", syncProcs)
		runtime.GOMAXPROCS(syncProcs)
	}
	s, err := pebblestore.New(pebblestore.Config{Dir: filepath.Join(c.DataDir, "sessions"), Log: log.With("store", "pebble"), SyncInterval: c.storeSyncInterval()})
	if err != nil {
		return nil, fmt.Errorf("ROOST_DATA_DIR: %w", err)
	}
	return s, nil
}

// syncProcs is the fewest Ps (GOMAXPROCS) Roost runs with when the
// embedded session store fsyncs each write before its acknowledgement
// (ROOST_STORE_SYNC=always). A goroutine in a system call keeps its P, and
// Pebble's log writer calls fdatasync as an ordinary one: with one P (a
// process given one CPU, by affinity or a container's limit, which the
// runtime follows) nothing else runs while the disk syncs, until the
// runtime's monitor takes the P back, if it is awake to. The connections
// then come back to the store one at a time, and a group commit has
// little to group. With a second P the other goroutines run on while the
// fsync waits for the disk. Measured in roost-bench's
// p2p QoS 1 run with a webhook rule, roost serve pinned to one core (see
// docs/benchmarks.md): about twice the messages a second, with the figure
// without a rule unchanged within its spread. An explicit GOMAXPROCS is
// left as set.
const syncProcs = 2

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
