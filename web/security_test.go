package web_test

import (
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/roosthub/roost/tenants"
)

// regexpKey finds an API key on a page.
var regexpKey = regexp.MustCompile(`rk_[A-Za-z0-9]{26}_[A-Za-z0-9_-]{43}`)

// accountID finds an account's id by its email, through a tenant's members.
func (s *stack) accountID(tenant, email string) string {
	s.t.Helper()
	ms, _, err := s.store.Members(s.t.Context(), tenant, tenants.Page{Limit: 100})
	if err != nil {
		s.t.Fatal(err)
	}
	for _, m := range ms {
		if m.Email == email {
			return m.AccountID
		}
	}
	s.t.Fatalf("%s is no member of %s", email, tenant)
	return ""
}

// replay is a fresh browser holding only the given cookie of b's.
func (b *browser) replay(name string) *browser {
	b.s.t.Helper()
	u, _ := url.Parse(b.s.url)
	c := b.s.browser()
	for _, ck := range b.http.Jar.Cookies(u) {
		if ck.Name == name {
			jar, _ := cookiejar.New(nil)
			jar.SetCookies(u, []*http.Cookie{{Name: ck.Name, Value: ck.Value, Path: "/"}})
			c.http.Jar = jar
			return c
		}
	}
	b.s.t.Fatalf("the browser has no %s cookie", name)
	return nil
}

// TestConsoleMembershipRules: the console removes members by the API's
// rules: an admin cannot remove an owner (the API's 403); an admin removes
// a viewer; anyone may leave; a removed member's API keys end.
func TestConsoleMembershipRules(t *testing.T) {
	s := newStack(t)
	owner, admin, viewer := s.browser(), s.browser(), s.browser()
	ownerEmail := owner.signup("owner")
	adminEmail, viewerEmail := admin.signup("admin"), viewer.signup("viewer")
	owner.tenant("acme")
	owner.get("/tenants/acme/members")
	for email, role := range map[string]string{adminEmail: "admin", viewerEmail: "viewer"} {
		if a := owner.post("/tenants/acme/members", url.Values{"email": {email}, "role": {role}}); a.status != http.StatusSeeOther {
			t.Fatalf("add %s: %d %s", role, a.status, a.body)
		}
	}
	ownerID, adminID, viewerID := s.accountID("acme", ownerEmail), s.accountID("acme", adminEmail), s.accountID("acme", viewerEmail)

	page := admin.get("/tenants/acme/members")
	if strings.Contains(page.body, "/tenants/acme/members/"+ownerID+"/delete") {
		t.Error("the admin's members page offers to remove the owner")
	}
	if a := admin.post("/tenants/acme/members/"+ownerID+"/delete", nil); a.status != http.StatusForbidden {
		t.Errorf("the admin removes the owner: %d, want 403", a.status)
	}
	if _, err := s.store.Membership(t.Context(), "acme", ownerID); err != nil {
		t.Fatalf("the owner after the admin's attempt: %v", err)
	}
	if a := viewer.post("/tenants/acme/members/"+adminID+"/delete", nil); a.status != http.StatusForbidden {
		t.Errorf("the viewer removes the admin: %d, want 403", a.status)
	}
	// The admin's key ends with its membership.
	admin.get("/tenants/acme/api-keys")
	keys := admin.post("/tenants/acme/api-keys", url.Values{"name": {"ci"}, "role": {"admin"}})
	token := regexpKey.FindString(keys.body)
	if token == "" {
		t.Fatalf("no key on the page: %d", keys.status)
	}
	if a := viewer.post("/tenants/acme/members/"+viewerID+"/delete", nil); a.status != http.StatusSeeOther || a.location != "/tenants" {
		t.Errorf("the viewer leaves: %d %s", a.status, a.location)
	}
	if a := owner.post("/tenants/acme/members/"+adminID+"/delete", nil); a.status != http.StatusSeeOther {
		t.Errorf("the owner removes the admin: %d", a.status)
	}
	if _, err := s.store.AuthenticateAPIKey(t.Context(), token); err == nil {
		t.Error("the removed admin's API key still works")
	}
	// The removed admin is told, on its tenants page.
	if a := admin.get("/tenants"); !strings.Contains(a.body, ownerEmail+" removed you from <code>acme</code>") {
		t.Errorf("the removed admin's tenants page lacks the notice")
	}
}

// TestConsoleLogoutEndsSession: after logging out, the old session cookie
// no longer opens a page, for the person and for the operator.
func TestConsoleLogoutEndsSession(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("ada")
	stolen := b.replay("roost_session")
	if a := stolen.get("/tenants"); a.status != http.StatusOK {
		t.Fatalf("the copied cookie before logout: %d", a.status)
	}
	b.post("/logout", nil)
	if a := stolen.get("/tenants"); a.status != http.StatusSeeOther || !strings.HasPrefix(a.location, "/login") {
		t.Errorf("the copied cookie after logout: %d %s, want the login page", a.status, a.location)
	}

	op := s.browser()
	op.get("/admin/login")
	if a := op.post("/admin/login", url.Values{"token": {operatorToken}}); a.status != http.StatusSeeOther {
		t.Fatalf("operator login: %d", a.status)
	}
	stolenOp := op.replay("roost_operator")
	if a := stolenOp.get("/admin"); a.status != http.StatusOK {
		t.Fatalf("the operator cookie before logout: %d", a.status)
	}
	op.post("/admin/logout", nil)
	if a := stolenOp.get("/admin"); a.status != http.StatusSeeOther || a.location != "/admin/login" {
		t.Errorf("the operator cookie after logout: %d %s, want the operator login", a.status, a.location)
	}
}

// TestConsoleLoginNext: after logging in the console goes only to a plain
// local path (TestSafeNext has the whole table).
func TestConsoleLoginNext(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	email := b.signup("ada")
	b.post("/logout", nil)
	for next, want := range map[string]string{
		"/tenants":             "/tenants",
		"/\t/evil.example/x":   "/",
		"/%09/evil.example/x":  "/",
		"//evil.example":       "/",
		"/\\evil.example":      "/",
		"https://evil.example": "/",
		"/\r\nLocation: x":     "/",
	} {
		b.get("/login?next=" + url.QueryEscape(next))
		a := b.post("/login", url.Values{"email": {email}, "password": {"correct horse battery"}, "next": {next}})
		if a.status != http.StatusSeeOther || a.location != want {
			t.Errorf("next %q: %d to %q, want %q", next, a.status, a.location, want)
		}
		if page := b.get("/login?next=" + url.QueryEscape(next)); strings.Contains(page.body, "evil.example") {
			t.Errorf("the login page carries next %q on", next)
		}
	}
}

// TestConsoleSignupTakenEmail: the console's sign-up never says an email
// has an account: its own password signs in, another is refused with one
// neutral message.
func TestConsoleSignupTakenEmail(t *testing.T) {
	s := newStack(t)
	email := s.browser().signup("ada")
	b := s.browser()
	b.get("/signup")
	a := b.post("/signup", url.Values{"email": {email}, "password": {"another long password"}, "password2": {"another long password"}})
	if a.status != http.StatusUnauthorized || strings.Contains(a.body, "exists") || !strings.Contains(a.body, "Could not sign up with this email and password") {
		t.Errorf("sign-up with a taken email and another password: %d", a.status)
	}
	a = b.post("/signup", url.Values{"email": {email}, "password": {"correct horse battery"}, "password2": {"correct horse battery"}})
	if a.status != http.StatusSeeOther || a.location != "/tenants" {
		t.Errorf("sign-up with a taken email and its password: %d %s, want signed in", a.status, a.location)
	}
}

// TestConsoleMemberAddSameAnswer: adding an email with an account and one
// without answer alike; the added person sees who added it.
func TestConsoleMemberAddSameAnswer(t *testing.T) {
	s := newStack(t)
	owner, bob := s.browser(), s.browser()
	ownerEmail := owner.signup("owner")
	bobEmail := bob.signup("bob")
	owner.tenant("acme")
	owner.get("/tenants/acme/members")
	known := owner.post("/tenants/acme/members", url.Values{"email": {bobEmail}, "role": {"viewer"}})
	unknown := owner.post("/tenants/acme/members", url.Values{"email": {"nobody-here@example.com"}, "role": {"viewer"}})
	if known.status != unknown.status || known.location != unknown.location || known.body != unknown.body {
		t.Errorf("an account %d %s, no account %d %s: want the same answer", known.status, known.location, unknown.status, unknown.location)
	}
	if a := bob.get("/tenants"); !strings.Contains(a.body, ownerEmail+" added you to <code>acme</code> as viewer") {
		t.Error("bob's tenants page lacks the notice")
	}
}

// TestConsoleOperatorThrottle: wrong operator tokens at the console's
// sign-in are throttled per address (429 with Retry-After); the right one
// still signs in.
func TestConsoleOperatorThrottle(t *testing.T) {
	s := newStack(t)
	op := s.browser()
	op.get("/admin/login")
	for i := range 10 {
		if a := op.post("/admin/login", url.Values{"token": {"rop_wrong-token-00000" + string(rune('a'+i))}}); a.status != http.StatusUnauthorized {
			t.Fatalf("wrong token %d: %d", i, a.status)
		}
	}
	a := op.post("/admin/login", url.Values{"token": {"rop_wrong-token-000000"}})
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" {
		t.Errorf("the eleventh wrong token: %d, Retry-After %q", a.status, a.header.Get("Retry-After"))
	}
	if a := op.post("/admin/login", url.Values{"token": {operatorToken}}); a.status != http.StatusSeeOther {
		t.Errorf("the right token after the flood: %d", a.status)
	}
}

// TestConsoleTenantLimit: the console holds an account to the same
// tenant limits as the API.
func TestConsoleTenantLimit(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	for _, slug := range []string{"one-1", "two-2", "three-3"} {
		b.tenant(slug)
	}
	b.get("/tenants")
	if a := b.post("/tenants", url.Values{"slug": {"four-4"}}); a.status != http.StatusForbidden || !strings.Contains(a.body, "free plan") {
		t.Errorf("a fourth free tenant: %d", a.status)
	}
}

// TestConsoleInvalidUTF8: a form or query holding bytes that are not
// UTF-8 is refused before it reaches the store. (Go's form parser passes
// such bytes on as they are; the store's validators refuse them in what
// they keep, but a login's email went on into a query, where Postgres
// fails on it: a 500 instead of a 400.)
func TestConsoleInvalidUTF8(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	email := b.signup("owner")
	b.tenant("acme")
	b.get("/tenants/acme/devices")
	if a := b.post("/tenants/acme/devices", url.Values{"name": {"d1"}, "metadata": {"room=k\xffitchen"}}); a.status != http.StatusBadRequest {
		t.Errorf("a device form with invalid UTF-8: %d", a.status)
	}
	if ds, _, _ := s.store.Devices(t.Context(), "acme", tenantsPage()); len(ds) != 0 {
		t.Errorf("devices made: %d", len(ds))
	}
	if a := b.get("/tenants/acme/devices?q=%FF"); a.status != http.StatusBadRequest {
		t.Errorf("a search with invalid UTF-8: %d", a.status)
	}
	b.post("/logout", nil)
	b.get("/login")
	if a := b.post("/login", url.Values{"email": {"\xff" + email}, "password": {"correct horse battery"}}); a.status != http.StatusBadRequest {
		t.Errorf("a login whose email is not UTF-8: %d, want 400", a.status)
	}
}
