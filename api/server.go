package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/roosthub/roost/internal/health"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/billing"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/internal/accesslog"
	"github.com/roosthub/roost/mail"
	"github.com/roosthub/roost/tenants"
)

// Config is what the API needs to run.
type Config struct {
	Store *tenants.Store
	Log   *slog.Logger
	// AdminToken unlocks /v1/admin/*.
	AdminToken string
	// SigningKey signs console session tokens; at least 32 bytes.
	SigningKey []byte
	// TokenTTL is how long a session lasts, for the auth front New builds
	// when Auth is nil; the front's default if zero.
	TokenTTL time.Duration
	// Ready reports whether the server can serve; nil means the store's ping.
	Ready func(ctx context.Context) error
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// DataPlane serves device status, disconnects and publishes; nil makes
	// those routes answer 503.
	DataPlane dataplane.DataPlane
	// StreamPoll is how often an app stream with events looks for new
	// ones in the store (1s if zero); StreamHeartbeat how often an idle
	// stream sends a comment so that proxies keep it open (15s if zero).
	StreamPoll, StreamHeartbeat time.Duration
	// StreamLease is how long an app stream still counts against its
	// tenant's max_streams after the process serving it last renewed it
	// (it does every third of that): a process that dies frees its
	// streams' places within it. DefaultStreamLease if zero.
	StreamLease time.Duration
	// Metrics serves Prometheus metrics at /metrics, to the operator; nil
	// answers 503.
	Metrics http.Handler
	// Billing runs the billing routes; nil is billing off.
	Billing *billing.Service
	// Auth is the sign-in, session and throttle front the API shares with
	// the console; nil builds one of the API's own from the settings above.
	Auth *auth.Service
	// Webhooks sends destinations' test requests and decides which URLs
	// they may have; nil: a sender that requires HTTPS and allows no
	// private address.
	Webhooks *dataout.Sender
	// Sealer seals destination secrets at rest; nil: one keyed from
	// AdminToken (dataout.KeyFromToken), as every node of a fleet has it.
	Sealer *dataout.Sealer
	// OperatorKafka says the hub exports to the operator's Kafka
	// (ROOST_KAFKA_BROKERS): the built-in destination operator-kafka is
	// listed then.
	OperatorKafka bool
	// Mailer and PublicURL are for the auth front New builds when Auth is
	// nil: the account mails and the console links in them.
	Mailer    mail.Mailer
	PublicURL string
}

// Server is the REST API. It is an http.Handler.
type Server struct {
	router chi.Router
	store  *tenants.Store
	log    *slog.Logger
	// auth signs people in, keeps their sessions and throttles attempts.
	auth      *auth.Service
	ready     func(ctx context.Context) error
	dataPlane dataplane.DataPlane
	streams   *streams
	now       func() time.Time
	metrics   http.Handler
	billing   *billing.Service
	webhooks  *dataout.Sender
	sealer    *dataout.Sealer
	sendTests *sendLimiter
	// ruleTests is each tenant's share of this process's CPU for the
	// rules it compiles and tests (rules/test, POST …/rules).
	ruleTests *dataout.Budgets
	// operatorKafka: list the built-in destination operator-kafka.
	operatorKafka bool
}

// New builds the API.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("api: no store")
	}
	if len(cfg.SigningKey) < 32 {
		return nil, errors.New("api: signing key shorter than 32 bytes")
	}
	if len(cfg.AdminToken) < 16 {
		return nil, errors.New("api: admin token shorter than 16 characters")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Ready == nil {
		cfg.Ready = cfg.Store.Ping
	}
	// Anyone may ask /readyz: one check a second serves them all.
	cfg.Ready = health.Cache(cfg.Ready, time.Second, 2*time.Second).Check
	if cfg.Billing == nil {
		b, err := billing.New(billing.Config{Store: cfg.Store, Log: cfg.Log, Now: cfg.Now})
		if err != nil {
			return nil, err
		}
		cfg.Billing = b
	}
	if cfg.Auth == nil {
		a, err := auth.New(auth.Config{Store: cfg.Store, SigningKey: cfg.SigningKey, TokenTTL: cfg.TokenTTL,
			AdminToken: cfg.AdminToken, Log: cfg.Log, Now: cfg.Now, Sealer: cfg.Sealer, Mailer: cfg.Mailer, PublicURL: cfg.PublicURL})
		if err != nil {
			return nil, err
		}
		cfg.Auth = a
	}
	if cfg.Webhooks == nil {
		g, err := dataout.NewGuard("", false)
		if err != nil {
			return nil, err
		}
		if cfg.Webhooks, err = dataout.NewSender(dataout.SenderConfig{Guard: g, Now: cfg.Now}); err != nil {
			return nil, err
		}
	}
	if cfg.Sealer == nil {
		sealer, err := dataout.NewSealer(dataout.KeyFromToken(cfg.AdminToken))
		if err != nil {
			return nil, err
		}
		cfg.Sealer = sealer
	}
	s := &Server{
		store:     cfg.Store,
		log:       cfg.Log,
		auth:      cfg.Auth,
		ready:     cfg.Ready,
		dataPlane: cfg.DataPlane,
		streams:   newStreams(cfg.Store, cfg.StreamPoll, cfg.StreamHeartbeat, cfg.StreamLease),
		now:       cfg.Now,
		metrics:   cfg.Metrics,
		billing:   cfg.Billing,
		webhooks:  cfg.Webhooks,
		sealer:    cfg.Sealer,
		sendTests: newSendLimiter(cfg.Now),
		ruleTests: new(dataout.Budgets),
	}
	s.operatorKafka = cfg.OperatorKafka
	s.router = s.routes()
	return s, nil
}

// ServeHTTP serves the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// Router exposes the route table, for tests that walk it.
func (s *Server) Router() chi.Routes { return s.router }

// handler is an HTTP handler that returns its error; serve turns the error
// into a problem response.
type handler func(w http.ResponseWriter, r *http.Request) error

func (s *Server) serve(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.fail(w, r, err)
		}
	}
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	writeProblem(w, toProblem(err, requestID(r.Context()), s.log))
}

type requestIDKey struct{}

// requestInfo is what the handlers learn about a request that its access
// log line reports: who made it.
type requestInfo struct{ actor string }

type requestInfoKey struct{}

func requestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// observe gives each request an id (echoed in X-Request-Id and in problems),
// recovers a panic into a 500 for that request alone, and logs one line per
// request: never a body, header or query, so no secret reaches the log.
func (s *Server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := make([]byte, 8)
		rand.Read(b)
		id := hex.EncodeToString(b)
		w.Header().Set("X-Request-Id", id)
		info := &requestInfo{actor: "anonymous"}
		ctx := context.WithValue(context.WithValue(r.Context(), requestIDKey{}, id), requestInfoKey{}, info)
		r = r.WithContext(ctx)
		rec := &accesslog.Recorder{ResponseWriter: w}
		start := time.Now()
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic serving request", "request_id", id, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				if rec.Status == 0 {
					s.fail(rec, r, errors.New("panic"))
				}
			}
			route := chi.RouteContext(r.Context()).RoutePattern()
			s.log.Info("request", "request_id", id, "method", r.Method, "route", route,
				"status", rec.Status, "duration_ms", time.Since(start).Milliseconds(), "bytes", rec.Bytes,
				"actor", info.actor, "remote", r.RemoteAddr)
		}()
		next.ServeHTTP(rec, r)
	})
}
