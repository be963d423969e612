package api_test

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/mail"
	"github.com/roosthub/roost/tenants"
)

var tokenInLink = regexp.MustCompile(`token=([A-Za-z0-9_.%-]+)`)

// waitMail polls the mail folder (up to 20 s: mails leave in the
// background) for a mail to to whose subject contains subject and that is
// not among seen, and returns the token of its link ("" if it has none).
func (e *env) waitMail(to, subject string, seen map[string]bool) (mail.Message, string) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ms, err := mail.ReadFolder(e.mailDir)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, m := range ms {
			if m.To == to && strings.Contains(m.Subject, subject) && !seen[m.Text] {
				seen[m.Text] = true
				tok := ""
				if g := tokenInLink.FindStringSubmatch(m.Text); g != nil {
					tok = strings.ReplaceAll(g[1], "%2E", ".")
				}
				return m, tok
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no mail %q to %s in 20 s; the folder holds %d mails", subject, to, len(ms))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) login(email, password string) string {
	e.t.Helper()
	r := e.do("POST", "/v1/login", "", map[string]string{"email": email, "password": password})
	want(e.t, r, http.StatusOK, "login "+email)
	return r.str("token")
}

// TestVerifyEmail: an unverified account signs in and creates a tenant but
// may not add members or buy a plan, nor may an API key it made; the mailed
// link verifies it, once, for someone who holds the account.
func TestVerifyEmail(t *testing.T) {
	e := newEnv(t)
	ada := e.signupUnverified("ada")
	if v := e.do("GET", "/v1/me", ada.token, nil).json()["account"].(map[string]any)["email_verified"]; v != false {
		t.Fatalf("email_verified of a new account = %v, want false", v)
	}
	e.mustTenant(ada, "ada-t")
	_, key := e.mustKey(ada.token, "ada-t", tenants.RoleAdmin)
	member := map[string]string{"email": "bo@example.com", "role": "viewer"}
	wantProblem(t, e.do("POST", "/v1/tenants/ada-t/members", ada.token, member), 403, "email_unverified", "", "add a member unverified")
	wantProblem(t, e.do("POST", "/v1/tenants/ada-t/members", key, member), 403, "email_unverified", "", "add a member with an unverified person's key")
	wantProblem(t, e.do("POST", "/v1/tenants/ada-t/billing/checkout", ada.token, map[string]string{"plan": "pro"}), 403, "email_unverified", "", "checkout unverified")

	seen := map[string]bool{}
	m, tok := e.waitMail(ada.email, "Confirm your email", seen)
	if tok == "" || m.HTML == "" {
		t.Fatalf("the verification mail has no link or no HTML part: %+v", m)
	}
	wantProblem(t, e.do("POST", "/v1/verify", "", map[string]string{"token": tok + "x"}), 400, "invalid_token", "", "verify with a wrong token")
	wantProblem(t, e.do("POST", "/v1/verify", "", map[string]string{}), 400, "invalid_token", "", "verify with no token")
	// Opened with the account's own session, the link verifies with a
	// click (TestVerifyEmailNeedsTheAccount has the other ways).
	r := e.do("POST", "/v1/verify", ada.token, map[string]string{"token": tok})
	want(t, r, 200, "verify")
	if r.json()["email_verified"] != true {
		t.Errorf("verify answered %s, want email_verified true", r.body)
	}
	wantProblem(t, e.do("POST", "/v1/verify", "", map[string]string{"token": tok}), 400, "invalid_token", "", "verify twice")
	wantProblem(t, e.do("POST", "/v1/verify/resend", ada.token, nil), 409, "already_verified", "", "resend when verified")
	want(t, e.do("POST", "/v1/tenants/ada-t/members", ada.token, member), 202, "add a member verified")
	want(t, e.do("POST", "/v1/tenants/ada-t/members", key, member), 202, "add a member with a verified person's key")

	// Resend: a new link, the older stops working.
	bo := e.signupUnverified("bo")
	_, first := e.waitMail(bo.email, "Confirm your email", seen)
	want(t, e.do("POST", "/v1/verify/resend", bo.token, nil), 202, "resend")
	_, second := e.waitMail(bo.email, "Confirm your email", seen)
	wantProblem(t, e.do("POST", "/v1/verify", "", map[string]string{"token": first}), 400, "invalid_token", "", "a replaced link")
	want(t, e.do("POST", "/v1/verify", "", map[string]string{"token": second, "password": "correct horse battery"}), 200, "the newer link")
	wantProblem(t, e.do("POST", "/v1/verify/resend", key, nil), 403, "not_an_account", "", "resend with an API key")
}

// TestPasswordForgotAndReset: forgot answers 202 for any email; the mailed
// token resets the password once and ends every session of the account.
func TestPasswordForgotAndReset(t *testing.T) {
	e := newEnv(t)
	ada, bo := e.signup("ada"), e.signup("bo")
	second := e.login(ada.email, "correct horse battery")
	e.mustTenant(ada, "ada-t")
	keyID, key := e.mustKey(ada.token, "ada-t", tenants.RoleViewer)

	want(t, e.do("POST", "/v1/password/forgot", "", map[string]string{"email": "nobody@example.com"}), 202, "forgot for no account")
	want(t, e.do("POST", "/v1/password/forgot", "", map[string]string{"email": strings.ToUpper(ada.email)}), 202, "forgot")
	wantProblem(t, e.do("POST", "/v1/password/forgot", "", map[string]string{}), 400, "invalid", "email", "forgot with no email")
	seen := map[string]bool{}
	m, tok := e.waitMail(ada.email, "Reset your Roost password", seen)
	if !strings.Contains(m.Text, "/password/reset?token=") {
		t.Errorf("the reset mail links no reset page: %s", m.Text)
	}
	wantProblem(t, e.do("POST", "/v1/password/reset", "", map[string]string{"token": tok, "password": "short"}), 400, "invalid", "password", "a short password")
	wantProblem(t, e.do("POST", "/v1/password/reset", "", map[string]string{"token": "tok_x.y", "password": "a brand new password"}), 400, "invalid_token", "", "a made-up token")
	want(t, e.do("POST", "/v1/password/reset", "", map[string]string{"token": tok, "password": "a brand new password"}), 204, "reset")
	wantProblem(t, e.do("POST", "/v1/password/reset", "", map[string]string{"token": tok, "password": "another new password"}), 400, "invalid_token", "", "the token again")

	for name, tok := range map[string]string{"ada's first session": ada.token, "ada's second session": second} {
		want(t, e.do("GET", "/v1/me", tok, nil), 401, name+" after the reset")
	}
	want(t, e.do("GET", "/v1/me", bo.token, nil), 200, "bo's session after ada's reset")
	if r := e.do("GET", "/v1/me", key, nil); r.status != 200 || r.json()["api_key"].(map[string]any)["id"] != keyID {
		t.Errorf("ada's API key after the reset: %d %s, want it working", r.status, r.body)
	}
	want(t, e.do("POST", "/v1/login", "", map[string]string{"email": ada.email, "password": "correct horse battery"}), 401, "the old password")
	e.login(ada.email, "a brand new password")
	e.waitMail(ada.email, "password was reset", seen)
}

// TestPasswordForgotThrottled: after three requests in a row for one email
// the next waits, whether or not the email has an account.
func TestPasswordForgotThrottled(t *testing.T) {
	e := newEnv(t)
	ada := e.signup("ada")
	for _, email := range []string{ada.email, "nobody@example.com"} {
		for range 3 {
			want(t, e.do("POST", "/v1/password/forgot", "", map[string]string{"email": email}), 202, "forgot "+email)
		}
		r := e.do("POST", "/v1/password/forgot", "", map[string]string{"email": email})
		wantProblem(t, r, 429, "too_many_attempts", "", "a fourth forgot for "+email)
		if r.header.Get("Retry-After") == "" {
			t.Errorf("429 without Retry-After")
		}
	}
	// Reset tokens guessed from one address are login failures of it.
	var last response
	for range 25 {
		last = e.do("POST", "/v1/password/reset", "", map[string]string{"token": "tok_x.guess", "password": "a brand new password"})
		if last.status == 429 {
			break
		}
	}
	wantProblem(t, last, 429, "too_many_attempts", "", "the reset guesses past the address's budget")
}

// TestPasswordChange: the current password is checked; the session asking
// stays, the person's other sessions end, their API keys do not.
func TestPasswordChange(t *testing.T) {
	e := newEnv(t)
	ada := e.signup("ada")
	other := e.login(ada.email, "correct horse battery")
	e.mustTenant(ada, "ada-t")
	_, key := e.mustKey(ada.token, "ada-t", tenants.RoleAdmin)

	wantProblem(t, e.do("POST", "/v1/password", ada.token, map[string]string{"old_password": "wrong password", "password": "a brand new password"}), 400, "invalid", "old_password", "a wrong current password")
	wantProblem(t, e.do("POST", "/v1/password", ada.token, map[string]string{"old_password": "correct horse battery", "password": "short"}), 400, "invalid", "password", "a short new password")
	wantProblem(t, e.do("POST", "/v1/password", key, map[string]string{"old_password": "correct horse battery", "password": "a brand new password"}), 403, "not_an_account", "", "a change with an API key")
	want(t, e.do("POST", "/v1/password", "", map[string]string{"old_password": "correct horse battery", "password": "a brand new password"}), 401, "a change with no token")
	want(t, e.do("POST", "/v1/password", ada.token, map[string]string{"old_password": "correct horse battery", "password": "a brand new password"}), 204, "change")
	want(t, e.do("GET", "/v1/me", ada.token, nil), 200, "the session that changed the password")
	want(t, e.do("GET", "/v1/me", other, nil), 401, "the other session")
	want(t, e.do("GET", "/v1/tenants/ada-t", key, nil), 200, "the API key")
	e.login(ada.email, "a brand new password")
	e.waitMail(ada.email, "password was changed", map[string]bool{})
	es, _, err := e.store.AccountAudit(t.Context(), ada.id, tenants.Page{})
	if err != nil {
		t.Fatal(err)
	}
	if len(es) == 0 || es[0].Action != "account.password_change" || es[0].Actor != "account:"+ada.id {
		t.Errorf("ada's newest audit entry = %+v, want account.password_change by her", es)
	}
}

// TestSessionsOwnOnly: a person lists and ends their own sessions; another
// person can neither see nor end them, and API keys have none.
func TestSessionsOwnOnly(t *testing.T) {
	e := newEnv(t)
	ada, bo := e.signup("ada"), e.signup("bo")
	req, _ := http.NewRequest("POST", e.url+"/v1/login", strings.NewReader(`{"email":"`+ada.email+`","password":"correct horse battery"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "TestAgent/1.0")
	r := e.send(req)
	want(t, r, 200, "login with a user agent")
	second := r.str("token")

	r = e.do("GET", "/v1/sessions", ada.token, nil)
	want(t, r, 200, "list sessions")
	items := r.json()["items"].([]any)
	if len(items) != 2 {
		t.Fatalf("ada has %d sessions, want 2: %s", len(items), r.body)
	}
	var currentID, secondID string
	for _, it := range items {
		m := it.(map[string]any)
		if m["current"] == true {
			currentID = m["id"].(string)
		}
		if m["user_agent"] == "TestAgent/1.0" {
			secondID = m["id"].(string)
			if m["address"] != "127.0.0.1" {
				t.Errorf("the session's address = %v, want 127.0.0.1", m["address"])
			}
		}
	}
	if currentID == "" || secondID == "" || currentID == secondID {
		t.Fatalf("current %q, second %q: want two different sessions (%s)", currentID, secondID, r.body)
	}
	// Bo sees only his own and cannot end ada's.
	r = e.do("GET", "/v1/sessions", bo.token, nil)
	if strings.Contains(string(r.body), currentID) || strings.Contains(string(r.body), secondID) || len(r.json()["items"].([]any)) != 1 {
		t.Errorf("bo's list = %s, want his one session only", r.body)
	}
	wantProblem(t, e.do("DELETE", "/v1/sessions/"+secondID, bo.token, nil), 404, "not_found", "", "bo ending ada's session")
	want(t, e.do("GET", "/v1/me", second, nil), 200, "ada's session after bo tried to end it")
	e.mustTenant(bo, "bo-t")
	_, boKey := e.mustKey(bo.token, "bo-t", tenants.RoleOwner)
	for _, c := range []struct{ method, path string }{{"GET", "/v1/sessions"}, {"DELETE", "/v1/sessions/" + secondID}, {"DELETE", "/v1/sessions"}} {
		wantProblem(t, e.do(c.method, c.path, boKey, nil), 403, "not_an_account", "", c.method+" "+c.path+" with an API key")
		wantProblem(t, e.do(c.method, c.path, adminToken, nil), 403, "not_an_account", "", c.method+" "+c.path+" as the operator")
	}
	want(t, e.do("GET", "/v1/me", second, nil), 200, "ada's session after the others' attempts")

	// Ada ends her second session; it stops at once.
	want(t, e.do("DELETE", "/v1/sessions/"+secondID, ada.token, nil), 204, "end a session")
	want(t, e.do("GET", "/v1/me", second, nil), 401, "the ended session")
	wantProblem(t, e.do("DELETE", "/v1/sessions/"+secondID, ada.token, nil), 404, "not_found", "", "end it again")
	// End all others.
	third, fourth := e.login(ada.email, "correct horse battery"), e.login(ada.email, "correct horse battery")
	r = e.do("DELETE", "/v1/sessions", ada.token, nil)
	want(t, r, 200, "end the others")
	if n := r.json()["ended"]; n != float64(2) {
		t.Errorf("ended = %v, want 2", n)
	}
	for _, tok := range []string{third, fourth} {
		want(t, e.do("GET", "/v1/me", tok, nil), 401, "a session after ending the others")
	}
	want(t, e.do("GET", "/v1/me", ada.token, nil), 200, "the session that ended the others")
	want(t, e.do("GET", "/v1/me", bo.token, nil), 200, "bo's session after ada ended hers")
}

// TestLogoutEndsTokenAtOnce: the bearer token that logs out stops working
// on the very next request.
func TestLogoutEndsTokenAtOnce(t *testing.T) {
	e := newEnv(t)
	ada := e.signup("ada")
	other := e.login(ada.email, "correct horse battery")
	want(t, e.do("POST", "/v1/logout", ada.token, nil), 204, "logout")
	want(t, e.do("GET", "/v1/me", ada.token, nil), 401, "the token after logout")
	want(t, e.do("GET", "/v1/me", other, nil), 200, "another session of the account")
}

// TestAuditFilters: the audit route narrows by action, actor and time, and
// refuses a malformed time.
func TestAuditFilters(t *testing.T) {
	e := newEnv(t)
	ada := e.signup("ada")
	e.mustTenant(ada, "ada-t")
	e.mustDevice(ada.token, "ada-t", "d1")
	e.mustKey(ada.token, "ada-t", tenants.RoleViewer)
	r := e.do("GET", "/v1/tenants/ada-t/audit?action=device.", ada.token, nil)
	want(t, r, 200, "audit by action")
	items := r.json()["items"].([]any)
	if len(items) != 1 || items[0].(map[string]any)["action"] != "device.create" {
		t.Errorf("device entries = %s, want the one device.create", r.body)
	}
	r = e.do("GET", "/v1/tenants/ada-t/audit?actor=account:"+ada.id, ada.token, nil)
	if n := len(r.json()["items"].([]any)); n < 3 {
		t.Errorf("ada's entries = %d, want at least 3 (%s)", n, r.body)
	}
	r = e.do("GET", "/v1/tenants/ada-t/audit?since=2999-01-01T00:00:00Z", ada.token, nil)
	if n := len(r.json()["items"].([]any)); n != 0 {
		t.Errorf("entries since 2999 = %d, want 0", n)
	}
	wantProblem(t, e.do("GET", "/v1/tenants/ada-t/audit?since=yesterday", ada.token, nil), 400, "invalid", "since", "a malformed since")
}
