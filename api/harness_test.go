package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/roosthub/roost"
	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/mail"
	"github.com/roosthub/roost/tenants"
)

const adminToken = "rop_test-operator-token-0123456789"

// env is a running API on a real HTTP server over a fresh SQLite store. Every
// response it receives is validated against openapi.yaml.
type env struct {
	t        *testing.T
	url      string
	mqttAddr string
	api      *api.Server
	store    *tenants.Store
	logs     *testenv.Buffer
	clock    *testenv.Clock
	router   routers.Router
	// bodies holds every response body, for tests that look for leaks.
	bodies *testenv.Buffer
	// client sends the requests; nil is http.DefaultClient (from 127.0.0.1).
	client *http.Client
	// mailDir is where the API's mails are written, one file each.
	mailDir string
	// hub is the data plane mqttAddr serves.
	hub *broker.Hub
	// storeDir holds the store's database, for a test that opens it
	// again as another process would.
	storeDir string
}

// from returns the env with requests sent from another loopback address,
// such as 127.0.0.2: the API sees them come from there.
func (e *env) from(addr string) *env {
	e.t.Helper()
	c := *e
	c.client = testenv.ClientFrom(addr)
	return &c
}

func newEnv(t *testing.T) *env { t.Helper(); return newEnvWith(t, nil) }

// storeSink stores each event as it comes, for tests that read an event
// right after the call that raised it.
type storeSink struct{ store *tenants.Store }

func (s storeSink) Emit(e events.Event) {
	if err := s.store.AddEvents(context.Background(), []events.Event{e}); err != nil {
		panic(err)
	}
}

// newEnvWith is newEnv with a hook that may change the API's configuration
// (its store and clock are set) before the API is built.
func newEnvWith(t *testing.T, configure func(*api.Config)) *env {
	t.Helper()
	ctx := context.Background()
	storeDir := t.TempDir()
	store, err := tenants.Open(ctx, "", storeDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	clk := testenv.NewClock(time.Now())
	logs := &testenv.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// Events are stored as in production: off the hot path, in batches.
	ev := events.NewRecorder(events.RecorderConfig{Writer: store, Log: log})
	t.Cleanup(func() { ev.Close() })
	// The hub delivers webhooks to receivers on loopback, retrying for
	// half a second (see TestDeadLetters).
	delivery := &broker.Delivery{Rules: store, Sealer: mustSealer(t), Sender: mustSender(t), Batch: 10,
		Policy: dataout.Policy{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond, Horizon: 500 * time.Millisecond}}
	hub, err := broker.New(broker.Config{Directory: store, Changes: store.Changes(), Log: log, Events: ev, Usage: store,
		Sessions: memory.New(), Delivery: delivery})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hub.Serve(ln)
	t.Cleanup(func() { hub.Close() })
	mailer, err := mail.NewFolder(filepath.Join(t.TempDir(), "mail"), "roost@example.com", log)
	if err != nil {
		t.Fatal(err)
	}
	cfg := api.Config{
		Mailer:     mailer,
		DataPlane:  hub,
		Store:      store,
		Log:        log,
		AdminToken: adminToken,
		SigningKey: bytes.Repeat([]byte("k"), 32),
		Now:        clk.Now,
	}
	if configure != nil {
		configure(&cfg)
	}
	if cfg.Auth == nil {
		// The front is built here, as api.New would, so that the test
		// waits for its mails before the mail folder is removed.
		front, err := auth.New(auth.Config{Store: cfg.Store, SigningKey: cfg.SigningKey, TokenTTL: cfg.TokenTTL,
			AdminToken: cfg.AdminToken, Log: cfg.Log, Now: cfg.Now, Mailer: cfg.Mailer, PublicURL: cfg.PublicURL})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(front.Close)
		cfg.Auth = front
	}
	srv, err := api.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return &env{t: t, url: hs.URL, mqttAddr: ln.Addr().String(), api: srv, store: store, logs: logs, clock: clk, router: specRouter(t), bodies: &testenv.Buffer{}, mailDir: mailer.Dir(), hub: hub, storeDir: storeDir}
}

var (
	specOnce sync.Once
	specDoc  *openapi3.T
	specErr  error
)

func loadSpec(t *testing.T) *openapi3.T {
	t.Helper()
	specOnce.Do(func() {
		loader := openapi3.NewLoader()
		specDoc, specErr = loader.LoadFromData(roost.OpenAPI)
		if specErr == nil {
			specErr = specDoc.Validate(context.Background())
			// Match requests to any host: tests serve on a random port.
			specDoc.Servers = nil
		}
	})
	if specErr != nil {
		t.Fatalf("openapi.yaml: %v", specErr)
	}
	return specDoc
}

func specRouter(t *testing.T) routers.Router {
	t.Helper()
	r, err := legacy.NewRouter(loadSpec(t))
	if err != nil {
		t.Fatalf("openapi router: %v", err)
	}
	return r
}

// response is what a request got back.
type response struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body into a generic map.
func (r response) json() map[string]any {
	var m map[string]any
	json.Unmarshal(r.body, &m)
	return m
}

func (r response) str(key string) string {
	s, _ := r.json()[key].(string)
	return s
}

// do sends a request with an optional bearer token and JSON body (a string is
// sent as is) and checks the response against the spec.
func (e *env) do(method, path, token string, body any) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return e.send(req)
}

// send sends a prepared request and checks the response against the spec.
func (e *env) send(req *http.Request) response {
	e.t.Helper()
	client := e.client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	e.bodies.Write(b)
	r := response{status: resp.StatusCode, header: resp.Header, body: b}
	e.validate(req, r)
	return r
}

// validate checks a response against openapi.yaml: the route and status must
// be documented and the body must match the schema.
func (e *env) validate(req *http.Request, r response) {
	e.t.Helper()
	if r.status == http.StatusMethodNotAllowed || (r.status == http.StatusNotFound && strings.Contains(string(r.body), `"no such route"`)) {
		return // not a route of the API, so not in the spec
	}
	route, params, err := e.router.FindRoute(req)
	if err != nil {
		e.t.Errorf("%s %s: not in openapi.yaml: %v", req.Method, req.URL.Path, err)
		return
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 r.status,
		Header:                 r.header,
		Body:                   io.NopCloser(bytes.NewReader(r.body)),
		Options: &openapi3filter.Options{
			IncludeResponseStatus: true,
			MultiError:            true,
			// Only JSON bodies have schemas to check; the YAML spec is text.
			ExcludeResponseBody: !strings.Contains(r.header.Get("Content-Type"), "json"),
		},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		e.t.Errorf("%s %s -> %d %s\ndoes not match openapi.yaml: %v", req.Method, req.URL.Path, r.status, r.body, err)
	}
}

// want fails the test unless the response has the status.
func want(t *testing.T, r response, status int, what string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: got %d %s, want %d", what, r.status, r.body, status)
	}
}

// wantProblem checks a problem response's status, code and field.
func wantProblem(t *testing.T, r response, status int, code, field string, what string) {
	t.Helper()
	want(t, r, status, what)
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: content type %q, want application/problem+json", what, ct)
	}
	m := r.json()
	if m["code"] != code {
		t.Errorf("%s: code %v, want %s (%s)", what, m["code"], code, r.body)
	}
	if field != "" && m["field"] != field {
		t.Errorf("%s: field %v, want %s (%s)", what, m["field"], field, r.body)
	}
}

// user is an account with a session token.
type user struct {
	id, email, token string
}

var userSeq struct {
	sync.Mutex
	n int
}

// signup makes an account with a verified email (verified through the
// store, as its mailed link would), signed in.
func (e *env) signup(name string) user {
	e.t.Helper()
	u := e.signupUnverified(name)
	e.verifyEmail(u.id)
	return u
}

// verifyEmail verifies an account's email through the store, as its
// mailed link would when sent with the account's newest session (the
// sign-up's): that session stays; any older one ends.
func (e *env) verifyEmail(account string) {
	e.t.Helper()
	ctx := context.Background()
	_, tok, err := e.store.IssueVerifyToken(ctx, account)
	if err != nil {
		e.t.Fatal(err)
	}
	keep := ""
	if ses, err := e.store.AccountSessions(ctx, account, e.clock.Now()); err == nil && len(ses) > 0 {
		keep = ses[0].ID
	}
	if _, err := e.store.VerifyEmail(ctx, tok, keep); err != nil {
		e.t.Fatal(err)
	}
}

// signupUnverified makes an account whose email is not verified yet.
func (e *env) signupUnverified(name string) user {
	e.t.Helper()
	userSeq.Lock()
	userSeq.n++
	email := fmt.Sprintf("%s-%d@example.com", name, userSeq.n)
	userSeq.Unlock()
	r := e.do("POST", "/v1/signup", "", map[string]string{"email": email, "password": "correct horse battery"})
	want(e.t, r, http.StatusCreated, "signup")
	acc := r.json()["account"].(map[string]any)
	return user{id: acc["id"].(string), email: email, token: r.str("token")}
}

func (e *env) mustTenant(u user, slug string) {
	e.t.Helper()
	want(e.t, e.do("POST", "/v1/tenants", u.token, map[string]string{"slug": slug}), http.StatusCreated, "create tenant "+slug)
}

// mustDevice creates a device and returns its secret.
func (e *env) mustDevice(token, tenant, name string) string {
	e.t.Helper()
	r := e.do("POST", "/v1/tenants/"+tenant+"/devices", token, map[string]string{"name": name})
	want(e.t, r, http.StatusCreated, "create device "+name)
	return r.str("secret")
}

// mustKey creates an API key and returns its id and token.
func (e *env) mustKey(token, tenant string, role tenants.Role) (string, string) {
	e.t.Helper()
	r := e.do("POST", "/v1/tenants/"+tenant+"/api-keys", token, map[string]string{"name": "key", "role": string(role)})
	want(e.t, r, http.StatusCreated, "create api key")
	return r.str("id"), r.str("key")
}

// mustDestination creates a webhook destination and returns its id.
func (e *env) mustDestination(token, tenant, name string) string {
	e.t.Helper()
	r := e.do("POST", "/v1/tenants/"+tenant+"/destinations", token, map[string]string{"name": name, "type": "webhook", "url": "https://hooks.example.com/" + name})
	want(e.t, r, http.StatusCreated, "create destination "+name)
	return r.str("id")
}

// mustSealer is the sealer the API uses by default: keyed from the
// operator token.
func mustSealer(t *testing.T) *dataout.Sealer {
	t.Helper()
	s, err := dataout.NewSealer(dataout.KeyFromToken(adminToken))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// mustSender sends webhooks to receivers on 127.0.0.1.
func mustSender(t *testing.T) *dataout.Sender {
	t.Helper()
	g, err := dataout.NewGuard("127.0.0.1", false)
	if err != nil {
		t.Fatal(err)
	}
	s, err := dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
