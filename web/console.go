// Package web is Roost's console: server-rendered pages (html/template, a
// little vanilla JavaScript, every asset embedded in the binary) for the
// people behind tenants — sign-up, devices, rules, a live message viewer,
// usage, events, API keys, members, billing — and for the operator.
//
// Every page works from the same store the REST API uses, with the same
// rules: a tenant's pages answer 404 to anyone who is not its member,
// writes need the admin role, and every form carries a CSRF token bound to
// a cookie by an HMAC.
package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/billing"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/mail"
	"github.com/roosthub/roost/tenants"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Endpoint is an address devices connect to, shown in connection snippets.
type Endpoint struct {
	Name string // MQTT, MQTT over TLS, WebSocket, WebSocket over TLS
	URL  string // mqtt://localhost:1883, mqtts://…, ws://…/mqtt, wss://…/mqtt
}

// Config is what the console needs.
type Config struct {
	Store     *tenants.Store
	DataPlane dataplane.DataPlane
	Billing   *billing.Service
	Log       *slog.Logger
	// SigningKey signs session cookies and CSRF tokens; at least 32 bytes.
	SigningKey []byte
	TokenTTL   time.Duration
	// AdminToken unlocks the operator pages.
	AdminToken string
	// Endpoints are where devices connect; the first is the plain MQTT one.
	Endpoints []Endpoint
	// SecureCookies marks cookies Secure and names the session, operator
	// and CSRF cookies with the __Host- prefix (the console is served over
	// HTTPS: `roost serve` sets it when ROOST_PUBLIC_URL is https://).
	SecureCookies bool
	Now           func() time.Time
	// Auth is the sign-in, session and throttle front the console shares
	// with the API; nil builds one of the console's own.
	Auth *auth.Service
	// Webhooks sends the webhooks page's send tests, with the hub's
	// address policy (the API's sender); nil: no address allowed.
	Webhooks *dataout.Sender
	// Sealer seals destinations' secrets (the API's, with the key ring);
	// nil: keyed by AdminToken alone.
	Sealer *dataout.Sealer
	// OperatorKafka says the hub exports to the operator's Kafka
	// (ROOST_KAFKA_BROKERS): the webhooks page then lists the built-in
	// destination operator-kafka and its rules, as the API does.
	OperatorKafka bool
	// Mailer and PublicURL are for the auth front New builds when Auth is
	// nil: the account mails and the links in them.
	Mailer    mail.Mailer
	PublicURL string
}

// Console is the web console. It is an http.Handler.
type Console struct {
	cfg    Config
	store  *tenants.Store
	auth   *auth.Service
	pages  map[string]*template.Template
	router chi.Router
	out    *webhookTools
	// rules is each tenant's share of this process's CPU for compiling
	// the rules its admins make here (see compileRule).
	rules dataout.Budgets
}

// New builds the console.
func New(cfg Config) (*Console, error) {
	if cfg.Store == nil {
		return nil, errors.New("web: no store")
	}
	if len(cfg.SigningKey) < 32 {
		return nil, errors.New("web: signing key shorter than 32 bytes")
	}
	if len(cfg.AdminToken) < 16 {
		return nil, errors.New("web: admin token shorter than 16 characters")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Billing == nil {
		b, err := billing.New(billing.Config{Store: cfg.Store, Log: cfg.Log, Now: cfg.Now})
		if err != nil {
			return nil, err
		}
		cfg.Billing = b
	}
	if len(cfg.Endpoints) == 0 {
		cfg.Endpoints = []Endpoint{{Name: "MQTT", URL: "mqtt://localhost:1883"}}
	}
	if cfg.Auth == nil {
		a, err := auth.New(auth.Config{Store: cfg.Store, SigningKey: cfg.SigningKey, TokenTTL: cfg.TokenTTL,
			AdminToken: cfg.AdminToken, Log: cfg.Log, Now: cfg.Now, Sealer: cfg.Sealer, Mailer: cfg.Mailer, PublicURL: cfg.PublicURL})
		if err != nil {
			return nil, err
		}
		cfg.Auth = a
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, store: cfg.Store, auth: cfg.Auth, pages: pages}
	if c.out, err = newWebhookTools(cfg); err != nil {
		return nil, err
	}
	c.router = c.routes()
	return c, nil
}

// ServeHTTP serves the console.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.router.ServeHTTP(w, r) }

// csp allows only the console's own scripts, styles and connections;
// forms may post to Stripe (Checkout and the portal answer a redirect).
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self' https:; base-uri 'none'; frame-ancestors 'none'"

// secure sets the security headers of every response.
func secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
		if !strings.HasPrefix(r.URL.Path, "/static/") {
			h.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

// Cookies, by their base names. Served over HTTPS (SecureCookies) each
// is named with the __Host- prefix (cookieName): a browser then takes it
// only with Secure, Path=/ and no Domain, from this host itself, so a
// neighbouring host (a sibling subdomain, or plain http on the same name)
// can neither set nor overwrite it — no planted CSRF nonce whose token the
// planter knows, no session of the planter's slipped into a visitor's
// browser. Over plain http (development: `make run` on localhost) a
// browser refuses __Host- cookies, so they keep their base names.
const (
	sessionCookie  = "roost_session"
	csrfCookie     = "roost_csrf"
	operatorCookie = "roost_operator"
)

// hostPrefix names a cookie bound to this host alone (RFC 6265bis 4.1.3.2).
const hostPrefix = "__Host-"

// cookieName is the name a cookie of base name base has here.
func (c *Console) cookieName(base string) string {
	if c.cfg.SecureCookies {
		return hostPrefix + base
	}
	return base
}

// cookie reads the visitor's cookie of base name base.
func (c *Console) cookie(r *http.Request, base string) (*http.Cookie, error) {
	return r.Cookie(c.cookieName(base))
}

// setCookie sets a cookie of base name base: HttpOnly, Path=/, no Domain,
// Secure over HTTPS (which __Host- needs).
func (c *Console) setCookie(w http.ResponseWriter, base, value string, maxAge time.Duration, site http.SameSite) {
	http.SetCookie(w, &http.Cookie{Name: c.cookieName(base), Value: value, Path: "/", HttpOnly: true, Secure: c.cfg.SecureCookies,
		SameSite: site, MaxAge: int(maxAge / time.Second)})
}

// clearCookie drops a cookie of base name base, and over HTTPS its name
// from before the __Host- prefix too.
func (c *Console) clearCookie(w http.ResponseWriter, base string) {
	http.SetCookie(w, &http.Cookie{Name: c.cookieName(base), Value: "", Path: "/", HttpOnly: true, Secure: c.cfg.SecureCookies, MaxAge: -1})
	if c.cfg.SecureCookies {
		http.SetCookie(w, &http.Cookie{Name: base, Value: "", Path: "/", HttpOnly: true, Secure: true, MaxAge: -1})
	}
}

// mac is the HMAC-SHA256 of the parts under the signing key.
func (c *Console) mac(parts ...string) string {
	m := hmac.New(sha256.New, c.cfg.SigningKey)
	m.Write([]byte(strings.Join(parts, "|")))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

type ctxKey int

const (
	keyVisitor ctxKey = iota
	keyCSRF
	keyAccount
	keyOperator
	keyTenant
	keyRole
)

// csrf gives every visitor a random cookie and every page the token bound
// to it (its HMAC); a POST without the matching token is refused 403.
// Signed double-submit: no one can make a token for a nonce without the
// signing key. The HMAC binds no session, so a neighbour who planted a
// nonce of its own in a visitor's browser would know its token (the
// console shows it the token for that nonce): over HTTPS the cookie's
// __Host- name is what keeps neighbours from planting it.
func (c *Console) csrf(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nonce := ""
		if ck, err := c.cookie(r, csrfCookie); err == nil && len(ck.Value) >= 22 {
			nonce = ck.Value
		}
		if r.Method == http.MethodPost {
			want := c.mac("csrf", nonce)
			got := r.Header.Get("X-CSRF-Token")
			if got == "" {
				r.Body = http.MaxBytesReader(w, r.Body, formLimit(r))
				got = r.PostFormValue("csrf")
			}
			if nonce == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
				c.log(r).Info("console: form refused, no valid CSRF token", "path", r.URL.Path)
				c.errorPage(w, r, http.StatusForbidden, "This form has expired or did not come from this console. Go back, reload the page and try again.")
				return
			}
		}
		if nonce == "" {
			b := make([]byte, 24)
			rand.Read(b)
			nonce = base64.RawURLEncoding.EncodeToString(b)
			c.setCookie(w, csrfCookie, nonce, 30*24*time.Hour, http.SameSiteStrictMode)
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), keyCSRF, c.mac("csrf", nonce))))
	})
}

// validText refuses a form or query holding text that is not UTF-8:
// Go's form parser passes the bytes on as they are, and they would reach
// the store (Postgres refuses them; SQLite keeps them) and the pages.
func (c *Console) validText(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, formLimit(r))
		}
		if err := r.ParseForm(); err != nil {
			c.errorPage(w, r, http.StatusBadRequest, "The form could not be read.")
			return
		}
		for k, vs := range r.Form {
			if !utf8.ValidString(k) || slices.ContainsFunc(vs, func(v string) bool { return !utf8.ValidString(v) }) {
				c.errorPage(w, r, http.StatusBadRequest, "The form holds text that is not valid UTF-8; nothing was changed.")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// maxForm bounds a form's body.
const maxForm = 64 << 10

// formLimit is maxForm, but for the device import's upload (maxImportForm).
func formLimit(r *http.Request) int64 {
	if strings.HasSuffix(r.URL.Path, "/"+importPath) {
		return maxImportForm
	}
	return maxForm
}

func (c *Console) log(r *http.Request) *slog.Logger { return c.cfg.Log.With("path", r.URL.Path) }

// account resolves the session cookie: an open account session (one that
// was logged out, in the console or with POST /v1/logout, is no longer).
func (c *Console) account(r *http.Request) (*tenants.Account, bool) {
	ck, err := c.cookie(r, sessionCookie)
	if err != nil {
		return nil, false
	}
	se, err := c.auth.AccountSession(r.Context(), ck.Value)
	if err != nil {
		if !errors.Is(err, tenants.ErrUnauthorized) {
			c.log(r).Error("console: session lookup", "err", err)
		}
		return nil, false
	}
	return &se.Account, true
}

// signedIn lets only signed-in visitors through; others go to the login
// page and come back.
func (c *Console) signedIn(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, ok := c.account(r)
		if !ok {
			http.Redirect(w, r, "/login?next="+urlQueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		ctx := tenants.WithActor(context.WithValue(r.Context(), keyAccount, a), "account:"+a.ID)
		setVisitor(ctx, "account:"+a.ID)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// visitor names who made a request, for the access log.
type visitor struct{ name string }

func withVisitor(ctx context.Context, v *visitor) context.Context {
	return context.WithValue(ctx, keyVisitor, v)
}

func setVisitor(ctx context.Context, name string) {
	if v, ok := ctx.Value(keyVisitor).(*visitor); ok {
		v.name = name
	}
}

func accountOf(r *http.Request) *tenants.Account {
	a, _ := r.Context().Value(keyAccount).(*tenants.Account)
	return a
}

// member finds the visitor's role in the {tenant} of the path: 404 for
// anyone without one, exactly as for a tenant that does not exist.
func (c *Console) member(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		slug := chi.URLParam(r, "tenant")
		m, err := c.store.Membership(r.Context(), slug, accountOf(r).ID)
		if errors.Is(err, tenants.ErrNotFound) {
			c.notFound(w, r)
			return
		}
		if err != nil {
			c.internal(w, r, err)
			return
		}
		t, err := c.store.Tenant(r.Context(), slug)
		if err != nil {
			c.fail(w, r, err)
			return
		}
		ctx := context.WithValue(r.Context(), keyTenant, &t)
		next.ServeHTTP(w, r.WithContext(context.WithValue(ctx, keyRole, m.Role)))
	})
}

func tenantOf(r *http.Request) *tenants.Tenant {
	t, _ := r.Context().Value(keyTenant).(*tenants.Tenant)
	return t
}

func roleOf(r *http.Request) tenants.Role {
	role, _ := r.Context().Value(keyRole).(tenants.Role)
	return role
}

// admin lets through only members with at least the admin role.
func (c *Console) admin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !roleOf(r).AtLeast(tenants.RoleAdmin) {
			c.errorPage(w, r, http.StatusForbidden, "This needs the admin role in the tenant; ask one of its owners.")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// operator lets through only a visitor signed in with the operator token.
func (c *Console) operatorOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !c.isOperator(r) {
			http.Redirect(w, r, "/admin/login", http.StatusSeeOther)
			return
		}
		setVisitor(r.Context(), "operator")
		next.ServeHTTP(w, r.WithContext(tenants.WithActor(context.WithValue(r.Context(), keyOperator, true), "operator")))
	})
}

// isOperator checks the operator cookie: a token of an open operator
// session, so the operator token itself never sits in a browser and a
// logout ends the session.
func (c *Console) isOperator(r *http.Request) bool {
	ck, err := c.cookie(r, operatorCookie)
	if err != nil {
		return false
	}
	_, err = c.auth.OperatorSession(r.Context(), ck.Value)
	return err == nil
}

// fail shows the page for an error, with the status the one table of
// error kinds (internal/problem) gives it, as the API would answer.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, billing.ErrOff) {
		c.errorPage(w, r, http.StatusConflict, err.Error())
		return
	}
	p := problem.Of(err)
	switch {
	case p.Internal():
		c.internal(w, r, err)
	case p.Status == http.StatusNotFound:
		c.notFound(w, r)
	default:
		if p.RetryAfter != "" {
			w.Header().Set("Retry-After", p.RetryAfter)
		}
		msg := err.Error()
		if p.Status == http.StatusServiceUnavailable {
			msg += " Try again in a moment."
		}
		c.errorPage(w, r, p.Status, msg)
	}
}

func (c *Console) internal(w http.ResponseWriter, r *http.Request, err error) {
	c.errorPage(w, r, http.StatusInternalServerError, c.logInternal(r, err))
}

// logInternal logs an error of no known kind under a new id and returns
// what the visitor is told of it.
func (c *Console) logInternal(r *http.Request, err error) string {
	b := make([]byte, 6)
	rand.Read(b)
	id := fmt.Sprintf("%x", b)
	c.log(r).Error("console: internal error", "err", err, "error_id", id)
	return "Something went wrong on our side (error " + id + "). Try again; if it keeps happening, quote the error id."
}

func (c *Console) notFound(w http.ResponseWriter, r *http.Request) {
	c.errorPage(w, r, http.StatusNotFound, "There is nothing here, or it is not yours to see.")
}

// errorData is what an error page says, and the way back from it.
type errorData struct {
	Message string
	// Back is the console page the visitor came from, or the nearest one
	// that can show: no error page is a dead end.
	Back, BackLabel string
}

func (c *Console) errorPage(w http.ResponseWriter, r *http.Request, status int, msg string) {
	back, label := backTo(r, status)
	c.render(w, r, status, "error.html", page{Title: http.StatusText(status), Data: errorData{Message: msg, Back: back, BackLabel: label}})
}

// backTo is where an error page leads back to: the page the form or link
// was on (the Referer, which the console's Referrer-Policy keeps to its own
// origin; only its path, and only a page of this console), else the
// section the request was for.
func backTo(r *http.Request, status int) (string, string) {
	if ref, err := url.Parse(r.Referer()); err == nil && ref.Host == r.Host && strings.HasPrefix(ref.Path, "/") &&
		!strings.HasPrefix(ref.Path, "//") && !strings.HasPrefix(ref.Path, "/static/") && !(r.Method == http.MethodGet && ref.Path == r.URL.Path) {
		back := ref.EscapedPath()
		if ref.RawQuery != "" {
			back += "?" + ref.RawQuery
		}
		return back, "Back to the page you came from"
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case len(parts) >= 3 && parts[0] == "tenants" && status != http.StatusNotFound:
		return "/tenants/" + url.PathEscape(parts[1]), "Back to the tenant's overview"
	case parts[0] == "admin" && r.URL.Path != "/admin":
		return "/admin", "Back to the tenants (operator)"
	}
	return "/", "Back to the console"
}

func urlQueryEscape(s string) string { return strings.ReplaceAll(templateURLEscape(s), "%2F", "/") }

func templateURLEscape(s string) string { return template.URLQueryEscaper(s) }

// static serves the embedded assets.
func static() http.Handler {
	sub, _ := fs.Sub(staticFS, "static")
	files := http.FileServer(http.FS(sub))
	return http.StripPrefix("/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		files.ServeHTTP(w, r)
	}))
}
