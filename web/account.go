package web

import (
	"encoding/csv"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/tenants"
)

// The console's account pages: verify the email, forget and reset the
// password, and, signed in, the account page (change the password, see
// and end one's sessions, one's own activity). They go through the auth
// front the API uses: the same tokens, throttles and mails.

func init() {
	for k, v := range map[string]string{
		"password":       "Password changed. Your other sessions were signed out.",
		"session-ended":  "Session ended: it is signed out everywhere.",
		"sessions-ended": "Every other session was signed out.",
		"verify-sent":    "A new verification link is on its way; the older one no longer works.",
		"reset":          "Your password is set, and every session was signed out. Log in with the new password.",
	} {
		flashes[k] = v
	}
}

// forgotPage asks for the email to send a reset link to.
func (c *Console) forgotPage(w http.ResponseWriter, r *http.Request) {
	email := r.URL.Query().Get("email") // the verify page's way out fills it in
	if len(email) > 254 {
		email = ""
	}
	c.render(w, r, http.StatusOK, "forgot.html", page{Title: "Forgot password", Form: map[string]string{"email": email}})
}

// forgot answers the same whether or not an account has the email.
func (c *Console) forgot(w http.ResponseWriter, r *http.Request) {
	email := strings.TrimSpace(r.PostFormValue("email"))
	p := page{Title: "Forgot password", Form: map[string]string{"email": email}}
	if email == "" || len(email) > 254 {
		p.Errors = map[string]string{"email": "Enter the email you signed up with."}
		c.render(w, r, http.StatusBadRequest, "forgot.html", p)
		return
	}
	err := c.auth.ForgotPassword(r.Context(), email, clientIP(r))
	switch {
	case err == nil:
		p.Data = true // sent
		c.render(w, r, http.StatusOK, "forgot.html", p)
	case errors.Is(err, tenants.ErrThrottled):
		p.Errors = map[string]string{"_": capital(err.Error()) + "."}
		c.renderRetry(w, r, err, "forgot.html", p)
	default:
		c.fail(w, r, err)
	}
}

// resetPage shows the new-password form for the token in the link. The
// token is spent only by the form's POST, so a mail scanner that opens
// the link spends nothing.
func (c *Console) resetPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "reset.html", page{Title: "Choose a new password", Form: map[string]string{"token": r.URL.Query().Get("token")}})
}

func (c *Console) reset(w http.ResponseWriter, r *http.Request) {
	token, password := r.PostFormValue("token"), r.PostFormValue("password")
	p := page{Title: "Choose a new password", Form: map[string]string{"token": token}}
	if password != r.PostFormValue("password2") {
		p.Errors = map[string]string{"password2": "The two passwords differ."}
		c.render(w, r, http.StatusBadRequest, "reset.html", p)
		return
	}
	_, err := c.auth.ResetPassword(r.Context(), token, password, clientIP(r))
	switch {
	case err == nil:
		// Every session of the account ended, this browser's too.
		c.clearCookie(w, sessionCookie)
		http.Redirect(w, r, "/login?done=reset", http.StatusSeeOther)
	case errors.Is(err, tenants.ErrThrottled):
		p.Errors = map[string]string{"_": capital(err.Error()) + "."}
		c.renderRetry(w, r, err, "reset.html", p)
	case errors.Is(err, tenants.ErrUnauthorized):
		p.Errors = map[string]string{"_": "This link is not valid, was used already, was replaced by a newer one or has expired. Ask for a new one."}
		c.render(w, r, http.StatusBadRequest, "reset.html", p)
	case errors.Is(err, tenants.ErrInvalid):
		p.Errors = formErrors(err)
		c.render(w, r, http.StatusBadRequest, "reset.html", p)
	default:
		c.fail(w, r, err)
	}
}

// verifyData is what the verify page shows: the account the link is
// for, whether the visitor is signed in as it, and whether it is done.
type verifyData struct {
	Email    string
	SignedIn bool
	Done     bool
}

// badVerifyLink is the verify page's answer to a link that does not work.
const badVerifyLink = "This link is not valid, was used already, was replaced by a newer one or has expired. Sign in and send a new one from your account page."

// verifyPage shows the form that verifies with the link's token: a button
// for a visitor signed in as the link's account, else a password field
// (and a way out for someone who does not know the password: a reset).
// The token is spent only by the form's POST, so a mail scanner that
// opens the link spends nothing.
func (c *Console) verifyPage(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("token")
	p := page{Title: "Verify your email", Form: map[string]string{"token": token}}
	a, err := c.auth.VerifyLink(r.Context(), token, clientIP(r))
	switch {
	case err == nil:
		se, _ := c.visitorSession(r)
		p.Data = verifyData{Email: a.Email, SignedIn: se.AccountID == a.ID}
		c.render(w, r, http.StatusOK, "verify.html", p)
	default:
		c.verifyFailed(w, r, err, p)
	}
}

// verifyFailed answers a verify link that does not work (too many tries
// from the address, or a bad link), or fails the request.
func (c *Console) verifyFailed(w http.ResponseWriter, r *http.Request, err error, p page) {
	switch {
	case errors.Is(err, tenants.ErrThrottled):
		p.Errors = map[string]string{"_": capital(err.Error()) + "."}
		c.renderRetry(w, r, err, "verify.html", p)
	case errors.Is(err, tenants.ErrUnauthorized):
		p.Errors = map[string]string{"_": badVerifyLink}
		c.render(w, r, http.StatusBadRequest, "verify.html", p)
	default:
		c.fail(w, r, err)
	}
}

// verify spends the link for a visitor signed in as its account, or one
// who gives its password (auth.Service.VerifyEmail).
func (c *Console) verify(w http.ResponseWriter, r *http.Request) {
	token := r.PostFormValue("token")
	p := page{Title: "Verify your email", Form: map[string]string{"token": token}}
	se, _ := c.visitorSession(r)
	a, err := c.auth.VerifyEmail(r.Context(), auth.Verification{Token: token, Password: r.PostFormValue("password"),
		Account: se.AccountID, Session: se.ID}, clientIP(r))
	switch {
	case err == nil:
		p.Data = verifyData{Email: a.Email, SignedIn: se.AccountID == a.ID, Done: true}
		c.render(w, r, http.StatusOK, "verify.html", p)
	case errors.Is(err, auth.ErrPasswordRequired):
		p.Data = verifyData{Email: a.Email}
		p.Errors = map[string]string{"password": "Enter the password of this account."}
		c.render(w, r, http.StatusBadRequest, "verify.html", p)
	case errors.Is(err, tenants.ErrInvalid):
		p.Data = verifyData{Email: a.Email}
		p.Errors = formErrors(err)
		c.render(w, r, http.StatusBadRequest, "verify.html", p)
	default:
		c.verifyFailed(w, r, err, p)
	}
}

// visitorSession is the open account session the visitor's cookie
// carries, if any.
func (c *Console) visitorSession(r *http.Request) (tenants.Session, bool) {
	ck, err := c.cookie(r, sessionCookie)
	if err != nil {
		return tenants.Session{}, false
	}
	se, err := c.auth.AccountSession(r.Context(), ck.Value)
	return se, err == nil
}

// currentSession is the id of the session the visitor's cookie carries.
func (c *Console) currentSession(r *http.Request) string {
	se, _ := c.visitorSession(r)
	return se.ID
}

type accountSession struct {
	tenants.Session
	Current bool
}

type accountData struct {
	Sessions []accountSession
}

// accountPage is the visitor's own page: verification, password, sessions.
func (c *Console) accountPage(w http.ResponseWriter, r *http.Request) {
	c.renderAccount(w, r, http.StatusOK, page{})
}

func (c *Console) renderAccount(w http.ResponseWriter, r *http.Request, status int, p page) {
	a := accountOf(r)
	// Read afresh: the session's copy may predate a verification.
	if fresh, err := c.store.Account(r.Context(), a.ID); err == nil {
		p.Account = &fresh
	}
	ses, err := c.auth.Sessions(r.Context(), a.ID)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	current := c.currentSession(r)
	d := accountData{}
	for _, se := range ses {
		d.Sessions = append(d.Sessions, accountSession{Session: se, Current: se.ID == current})
	}
	p.Title, p.Data = "Your account", d
	c.render(w, r, status, "account.html", p)
}

func (c *Console) passwordChange(w http.ResponseWriter, r *http.Request) {
	a := accountOf(r)
	old, password := r.PostFormValue("old_password"), r.PostFormValue("password")
	if password != r.PostFormValue("password2") {
		c.renderAccount(w, r, http.StatusBadRequest, page{Errors: map[string]string{"password2": "The two passwords differ."}})
		return
	}
	err := c.auth.ChangePassword(r.Context(), *a, c.currentSession(r), old, password, clientIP(r))
	switch {
	case err == nil:
		redirect(w, r, "/account", "password")
	case errors.Is(err, tenants.ErrThrottled):
		w.Header().Set("Retry-After", problem.Of(err).RetryAfter)
		c.renderAccount(w, r, http.StatusTooManyRequests, page{Errors: map[string]string{"_": capital(err.Error()) + "."}})
	case errors.Is(err, tenants.ErrInvalid):
		c.renderAccount(w, r, http.StatusBadRequest, page{Errors: formErrors(err)})
	default:
		c.fail(w, r, err)
	}
}

func (c *Console) verifyResend(w http.ResponseWriter, r *http.Request) {
	err := c.auth.ResendVerification(r.Context(), accountOf(r).ID)
	switch {
	case err == nil:
		redirect(w, r, "/account", "verify-sent")
	case errors.Is(err, tenants.ErrConflict):
		redirect(w, r, "/account", "")
	case errors.Is(err, tenants.ErrThrottled):
		w.Header().Set("Retry-After", problem.Of(err).RetryAfter)
		c.renderAccount(w, r, http.StatusTooManyRequests, page{Errors: map[string]string{"_": capital(err.Error()) + "."}})
	default:
		c.fail(w, r, err)
	}
}

// sessionEnd ends one of the visitor's sessions; another's is 404.
func (c *Console) sessionEnd(w http.ResponseWriter, r *http.Request) {
	err := c.auth.EndSession(r.Context(), accountOf(r).ID, chi.URLParam(r, "id"))
	if errors.Is(err, tenants.ErrNotFound) {
		c.notFound(w, r)
		return
	}
	if err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/account", "session-ended")
}

func (c *Console) sessionsEndOthers(w http.ResponseWriter, r *http.Request) {
	a := accountOf(r)
	if _, err := c.auth.EndOtherSessions(r.Context(), a.ID, c.currentSession(r)); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/account", "sessions-ended")
}

type activityData struct {
	Entries []tenants.AuditEntry
	Next    string
}

// activityPage is the visitor's own trail: what was done to their account
// (sign-up, verification, password changes and resets, sessions ended).
// ?format=csv downloads it.
func (c *Console) activityPage(w http.ResponseWriter, r *http.Request) {
	a := accountOf(r)
	if r.URL.Query().Get("format") == "csv" {
		c.writeAuditCSV(w, r, "account-activity.csv", func(p tenants.Page) ([]tenants.AuditEntry, string, error) {
			return c.store.AccountAudit(r.Context(), a.ID, p)
		})
		return
	}
	es, next, err := c.store.AccountAudit(r.Context(), a.ID, tenants.Page{Limit: 100, Cursor: r.URL.Query().Get("after")})
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "activity.html", page{Title: "Account activity", Data: activityData{Entries: es, Next: next}})
}

// auditFilter reads the audit page's filters; a malformed date is
// ignored rather than refused (the form's date inputs send ISO dates).
func auditFilterOf(r *http.Request) (tenants.AuditFilter, map[string]string) {
	q := r.URL.Query()
	f := tenants.AuditFilter{Action: strings.TrimSpace(q.Get("action")), Actor: strings.TrimSpace(q.Get("actor"))}
	form := map[string]string{"action": f.Action, "actor": f.Actor, "since": q.Get("since"), "until": q.Get("until")}
	if len(f.Action) > 100 {
		f.Action = f.Action[:100]
	}
	if len(f.Actor) > 200 {
		f.Actor = f.Actor[:200]
	}
	if t, err := time.Parse("2006-01-02", q.Get("since")); err == nil {
		f.Since = t
	}
	if t, err := time.Parse("2006-01-02", q.Get("until")); err == nil {
		f.Until = t.AddDate(0, 0, 1) // through the whole day
	}
	return f, form
}

// auditExport downloads the tenant's audit trail, filtered as the page
// is, as CSV: every matching entry, newest first, up to 100 000.
func (c *Console) auditExport(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	f, _ := auditFilterOf(r)
	c.writeAuditCSV(w, r, t.Slug+"-audit.csv", func(p tenants.Page) ([]tenants.AuditEntry, string, error) {
		return c.store.AuditWhere(r.Context(), t.Slug, f, p)
	})
}

// maxCSVRows bounds an export.
const maxCSVRows = 100_000

func (c *Console) writeAuditCSV(w http.ResponseWriter, r *http.Request, name string, page func(tenants.Page) ([]tenants.AuditEntry, string, error)) {
	// The first page is read before anything is sent, so a failure is
	// still an error page.
	es, next, err := page(tenants.Page{Limit: tenants.MaxPageSize})
	if err != nil {
		c.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
	w.Header().Set("Cache-Control", "no-store")
	cw := csv.NewWriter(w)
	cw.Write([]string{"time", "actor", "action", "object", "id"})
	rows := 0
	for {
		for _, e := range es {
			cw.Write([]string{e.At.Format(time.RFC3339), csvSafe(e.Actor), csvSafe(e.Action), csvSafe(e.Object), e.ID})
			rows++
		}
		if next == "" || rows >= maxCSVRows {
			break
		}
		if es, next, err = page(tenants.Page{Limit: tenants.MaxPageSize, Cursor: next}); err != nil {
			c.log(r).Error("console: audit export", "err", err)
			break
		}
	}
	cw.Flush()
}

// csvSafe keeps a cell from being read as a formula by a spreadsheet
// (CSV injection): a leading =, +, - or @ gets a quote before it.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// verifiedOnly lets through only visitors whose email is verified: buying
// a plan and adding members need it, as in the API.
func (c *Console) verifiedOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := c.auth.RequireVerified(r.Context(), accountOf(r).ID); err != nil {
			if errors.Is(err, tenants.ErrForbidden) {
				c.errorPage(w, r, http.StatusForbidden, "Verify your email first: open the link we mailed you, or send a new one from your account page (/account).")
				return
			}
			c.fail(w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// withOrigin notes the visitor's address and browser in the request's
// context, for the session a sign-in starts (the account page shows them).
func withOrigin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(tenants.WithOrigin(r.Context(), clientIP(r), r.UserAgent())))
	})
}
