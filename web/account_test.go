package web_test

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

var sessionRow = regexp.MustCompile(`data-session="(ses_[^"]+)"`)

// login signs the browser in as email.
func (b *browser) login(email, password string) {
	b.s.t.Helper()
	b.get("/login")
	if a := b.post("/login", url.Values{"email": {email}, "password": {password}}); a.status != http.StatusSeeOther {
		b.s.t.Fatalf("login %s: %d", email, a.status)
	}
}

// TestConsoleSessionsOwnOnly: a person sees and ends their own sessions in
// the console; another person can neither see nor end them.
func TestConsoleSessionsOwnOnly(t *testing.T) {
	s := newStack(t)
	alice, alice2, bob := s.browser(), s.browser(), s.browser()
	aliceEmail := alice.signup("alice")
	alice2.login(aliceEmail, "correct horse battery")
	bob.signup("bob")

	page := alice.get("/account").body
	ids := sessionRow.FindAllStringSubmatch(page, -1)
	if len(ids) != 2 || !strings.Contains(page, "this session") {
		t.Fatalf("alice's account page lists %d sessions, want 2 with this one marked", len(ids))
	}
	if !strings.Contains(page, "<td>127.0.0.1</td>") || !strings.Contains(page, "Go-http-client") {
		t.Errorf("alice's sessions do not show where they started (127.0.0.1, Go-http-client)")
	}
	bobPage := bob.get("/account").body
	for _, id := range ids {
		if strings.Contains(bobPage, id[1]) {
			t.Errorf("bob's account page shows alice's session %s", id[1])
		}
		if a := bob.post("/account/sessions/"+id[1]+"/delete", nil); a.status != http.StatusNotFound {
			t.Errorf("bob ending alice's session: %d, want 404", a.status)
		}
	}
	if a := alice2.get("/account"); a.status != http.StatusOK {
		t.Fatalf("alice's second session after bob's attempts: %d", a.status)
	}
	if a := alice.post("/account/sessions/delete", nil); a.status != http.StatusSeeOther {
		t.Fatalf("sign out everywhere else: %d", a.status)
	}
	if a := alice2.get("/account"); a.status != http.StatusSeeOther {
		t.Errorf("alice's second session after signing out everywhere else: %d, want a redirect to log in", a.status)
	}
	if a := alice.get("/account"); a.status != http.StatusOK {
		t.Errorf("the session that signed the others out: %d", a.status)
	}
	if a := bob.get("/account"); a.status != http.StatusOK {
		t.Errorf("bob's session after alice signed hers out: %d", a.status)
	}
}

// TestConsolePasswordChange: the current password is checked, the two new
// ones must agree, and a change signs out the person's other sessions.
func TestConsolePasswordChange(t *testing.T) {
	s := newStack(t)
	a, other := s.browser(), s.browser()
	email := a.signup("ada")
	other.login(email, "correct horse battery")
	a.get("/account")
	if r := a.post("/account/password", url.Values{"old_password": {"wrong one!"}, "password": {"a brand new password"}, "password2": {"a brand new password"}}); r.status != http.StatusBadRequest || !strings.Contains(r.body, "is not your current password") {
		t.Errorf("a wrong current password: %d", r.status)
	}
	if r := a.post("/account/password", url.Values{"old_password": {"correct horse battery"}, "password": {"a brand new password"}, "password2": {"another"}}); r.status != http.StatusBadRequest {
		t.Errorf("two different new passwords: %d, want 400", r.status)
	}
	r := a.post("/account/password", url.Values{"old_password": {"correct horse battery"}, "password": {"a brand new password"}, "password2": {"a brand new password"}})
	if r.status != http.StatusSeeOther {
		t.Fatalf("change: %d", r.status)
	}
	if r := a.get(r.location); r.status != http.StatusOK || !strings.Contains(r.body, "Password changed") {
		t.Errorf("the changing session after the change: %d", r.status)
	}
	if r := other.get("/account"); r.status != http.StatusSeeOther {
		t.Errorf("the other session after the change: %d, want a redirect to log in", r.status)
	}
	s.browser().login(email, "a brand new password")
}

// TestConsoleUnverified: an unverified person may look around but not add
// members or check out; their tenant's audit export is their tenant's
// alone.
func TestConsoleUnverified(t *testing.T) {
	s := newStack(t)
	u := s.browser()
	u.get("/signup")
	if a := u.post("/signup", url.Values{"email": {"new@example.com"}, "password": {"correct horse battery"}, "password2": {"correct horse battery"}}); a.status != http.StatusSeeOther {
		t.Fatalf("signup: %d", a.status)
	}
	u.tenant("fresh")
	for _, p := range []string{"/tenants/fresh/members", "/tenants/fresh/billing/checkout"} {
		if a := u.post(p, url.Values{"email": {"x@example.com"}, "role": {"viewer"}, "plan": {"pro"}}); a.status != http.StatusForbidden || !strings.Contains(a.body, "Verify your email first") {
			t.Errorf("POST %s unverified: %d, want 403 asking to verify", p, a.status)
		}
	}
	if a := u.get("/account"); !strings.Contains(a.body, "not verified yet") {
		t.Errorf("the account page does not say the email is unverified")
	}
	stranger := s.browser()
	stranger.signup("stranger")
	for _, p := range []string{"/tenants/fresh/audit/export", "/tenants/fresh/audit?action=tenant."} {
		if a := stranger.get(p); a.status != http.StatusNotFound {
			t.Errorf("GET %s as a stranger: %d, want 404", p, a.status)
		}
	}
	if a := u.get("/tenants/fresh/audit/export?action=tenant."); a.status != http.StatusOK || !strings.Contains(a.body, ",tenant.create,") || a.header.Get("Content-Disposition") == "" {
		t.Errorf("the owner's audit export: %d %q", a.status, a.body)
	}
}
