package web_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/mail"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/web"
)

const operatorToken = "rop_console-test-operator-token"

// stack is a console over a fresh store and a real data plane.
type stack struct {
	t        *testing.T
	url      string
	mqttAddr string
	store    *tenants.Store
	hub      *broker.Hub
	console  *web.Console
	logs     *testenv.Buffer
	// mailDir is where the console's mails are written, one file each.
	mailDir string
	// transport is how browsers reach url: nil for plain http, the test
	// server's for HTTPS (secureConsole).
	transport http.RoundTripper
}

func newStack(t *testing.T) *stack { t.Helper(); return newStackWith(t, nil) }

// newStackWith is newStack with a hook that may change the console's
// configuration (its store is set) before it is built.
func newStackWith(t *testing.T, configure func(*web.Config)) *stack {
	t.Helper()
	ctx := context.Background()
	store, err := tenants.Open(ctx, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// Events are stored as in production: off the hot path, in batches.
	ev := events.NewRecorder(events.RecorderConfig{Writer: store, Log: log})
	t.Cleanup(func() { ev.Close() })
	// The hub keeps outboxes in memory and retries webhooks for half a
	// second (see TestWebhooksPage).
	sealer, err := dataout.NewSealer(dataout.KeyFromToken(operatorToken))
	if err != nil {
		t.Fatal(err)
	}
	guard, err := dataout.NewGuard("127.0.0.1", false)
	if err != nil {
		t.Fatal(err)
	}
	sender, err := dataout.NewSender(dataout.SenderConfig{Guard: guard, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sender.Close)
	hub, err := broker.New(broker.Config{Directory: store, Changes: store.Changes(), Log: log, Events: ev, Usage: store,
		Sessions: memory.New(), Delivery: &broker.Delivery{Rules: store, Sealer: sealer, Sender: sender,
			Policy: dataout.Policy{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond, Horizon: 500 * time.Millisecond}}})
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
	cfg := web.Config{Store: store, DataPlane: hub, Log: log, SigningKey: bytes.Repeat([]byte("s"), 32), Mailer: mailer,
		AdminToken: operatorToken, Endpoints: []web.Endpoint{{Name: "MQTT", URL: "mqtt://" + ln.Addr().String()}}, Webhooks: sender}
	if configure != nil {
		configure(&cfg)
	}
	if cfg.Auth == nil {
		// The front is built here, as web.New would, so that the test
		// waits for its mails before the mail folder is removed.
		front, err := auth.New(auth.Config{Store: cfg.Store, SigningKey: cfg.SigningKey, TokenTTL: cfg.TokenTTL,
			AdminToken: cfg.AdminToken, Log: cfg.Log, Now: cfg.Now, Mailer: cfg.Mailer, PublicURL: cfg.PublicURL})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(front.Close)
		cfg.Auth = front
	}
	c, err := web.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(c)
	t.Cleanup(hs.Close)
	return &stack{t: t, url: hs.URL, mqttAddr: ln.Addr().String(), store: store, hub: hub, console: c, logs: logs, mailDir: mailer.Dir()}
}

// secureConsole is a second console over s's store, served over HTTPS
// with SecureCookies (as `roost serve` is with an https ROOST_PUBLIC_URL),
// built now: a stack whose browsers talk to it.
func (s *stack) secureConsole() *stack {
	s.t.Helper()
	front, err := auth.New(auth.Config{Store: s.store, SigningKey: bytes.Repeat([]byte("s"), 32), AdminToken: operatorToken})
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(front.Close)
	c, err := web.New(web.Config{Store: s.store, SigningKey: bytes.Repeat([]byte("s"), 32), AdminToken: operatorToken, Auth: front, SecureCookies: true})
	if err != nil {
		s.t.Fatal(err)
	}
	hs := httptest.NewTLSServer(c)
	s.t.Cleanup(hs.Close)
	sec := *s
	sec.url, sec.console, sec.transport = hs.URL, c, hs.Client().Transport
	return &sec
}

// browser is a cookie-keeping client that does not follow redirects.
type browser struct {
	s    *stack
	http *http.Client
	csrf string
}

func (s *stack) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{s: s, http: &http.Client{Jar: jar, Transport: s.transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type answer struct {
	status   int
	location string
	body     string
	header   http.Header
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (b *browser) get(path string) answer {
	b.s.t.Helper()
	resp, err := b.http.Get(b.s.url + path)
	if err != nil {
		b.s.t.Fatal(err)
	}
	return b.read(resp)
}

func (b *browser) read(resp *http.Response) answer {
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if m := csrfField.FindSubmatch(body); m != nil {
		b.csrf = string(m[1])
	}
	return answer{status: resp.StatusCode, location: resp.Header.Get("Location"), body: string(body), header: resp.Header}
}

// post sends a form with the page's CSRF token (unless the form sets one).
func (b *browser) post(path string, form url.Values) answer {
	b.s.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if _, ok := form["csrf"]; !ok {
		if b.csrf == "" {
			b.get("/login")
		}
		form.Set("csrf", b.csrf)
	}
	resp, err := b.http.PostForm(b.s.url+path, form)
	if err != nil {
		b.s.t.Fatal(err)
	}
	return b.read(resp)
}

var userSeq int

// signup makes an account and leaves the browser signed in.
func (b *browser) signup(name string) string {
	b.s.t.Helper()
	userSeq++
	email := fmt.Sprintf("%s-%d@example.com", name, userSeq)
	b.get("/signup")
	a := b.post("/signup", url.Values{"email": {email}, "password": {"correct horse battery"}, "password2": {"correct horse battery"}})
	if a.status != http.StatusSeeOther {
		b.s.t.Fatalf("signup %s: %d %s", email, a.status, a.body)
	}
	b.s.verifyEmail(email)
	return email
}

// verifyEmail verifies the account's email through the store, as its
// mailed link would: buying a plan and adding members need it.
func (s *stack) verifyEmail(email string) {
	s.t.Helper()
	ctx := context.Background()
	a, err := s.store.Authenticate(ctx, email, "correct horse battery")
	if err != nil {
		s.t.Fatal(err)
	}
	s.verifyAccount(a.ID)
}

// verifyAccount verifies the account's email through the store as the
// link opened in the browser that signed up would: the account's newest
// session (that browser's) stays; any older one ends.
func (s *stack) verifyAccount(account string) {
	s.t.Helper()
	ctx := context.Background()
	_, tok, err := s.store.IssueVerifyToken(ctx, account)
	if err != nil {
		s.t.Fatal(err)
	}
	keep := ""
	if ses, err := s.store.AccountSessions(ctx, account, time.Now()); err == nil && len(ses) > 0 {
		keep = ses[0].ID
	}
	if _, err := s.store.VerifyEmail(ctx, tok, keep); err != nil {
		s.t.Fatal(err)
	}
}

func (b *browser) tenant(slug string) {
	b.s.t.Helper()
	b.get("/tenants")
	if a := b.post("/tenants", url.Values{"slug": {slug}, "name": {slug}}); a.status != http.StatusSeeOther {
		b.s.t.Fatalf("create tenant %s: %d %s", slug, a.status, a.body)
	}
}

// device creates a device and returns its secret, read from the page.
func (b *browser) device(tenant, name string, metadata string) string {
	b.s.t.Helper()
	a := b.post("/tenants/"+tenant+"/devices", url.Values{"name": {name}, "metadata": {metadata}})
	if a.status != http.StatusSeeOther {
		b.s.t.Fatalf("create device %s: %d %s", name, a.status, a.body)
	}
	// Redirect after POST: the page it leads to shows the secret, once.
	a = b.get(a.location)
	m := regexp.MustCompile(`id="cred-secret">([^<]+)<`).FindStringSubmatch(a.body)
	if m == nil {
		b.s.t.Fatalf("no secret on the created page:\n%s", a.body)
	}
	return m[1]
}

func tenantsPage() tenants.Page { return tenants.Page{Limit: 100} }
