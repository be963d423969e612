package web_test

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
)

// totpCode is the TOTP code of secret at t.
func totpCode(t *testing.T, secret string, at time.Time) string { return testenv.TOTP(t, secret, at) }

var (
	secretOnPage = regexp.MustCompile(`id="mfa-secret">([A-Z2-7]+)<`)
	codesOnPage  = regexp.MustCompile(`<li><code>([a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4})</code></li>`)
	mfaTokenOn   = regexp.MustCompile(`name="mfa_token" value="([^"]+)"`)
)

// turnOnMFA sets up two-factor sign-in in the console and returns the
// secret and the recovery codes the pages showed.
func (b *browser) turnOnMFA() (string, []string) {
	t := b.s.t
	t.Helper()
	b.get("/account/two-factor")
	a := b.post("/account/two-factor/setup", nil)
	m := secretOnPage.FindStringSubmatch(a.body)
	if a.status != 200 || m == nil || !strings.Contains(a.body, `src="data:image/png;base64,`) {
		t.Fatalf("setup page: %d, no secret or QR code:\n%s", a.status, a.body)
	}
	secret := m[1]
	a = b.post("/account/two-factor/enable", url.Values{"code": {totpCode(t, secret, time.Now())}})
	var codes []string
	for _, m := range codesOnPage.FindAllStringSubmatch(a.body, -1) {
		codes = append(codes, m[1])
	}
	if a.status != 200 || len(codes) != 10 {
		t.Fatalf("enable: %d, %d recovery codes on the page, want 10:\n%s", a.status, len(codes), a.body)
	}
	return secret, codes
}

// TestConsoleTwoFactor: set up with the QR code page, recovery codes shown
// once; a login then asks for a code, which a TOTP code or a recovery code
// answers, each once; an owner requires two-factor of the tenant's
// members, and a member without it sees why and where to turn it on.
func TestConsoleTwoFactor(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	email := b.signup("owner")
	b.tenant("acme")
	secret, codes := b.turnOnMFA()
	if a := b.get("/account/two-factor"); strings.Contains(a.body, codes[0]) || !strings.Contains(a.body, "Recovery codes left: 10") {
		t.Errorf("the two-factor page after enabling shows the codes again or not the count:\n%s", a.body)
	}

	// A new browser logs in: the password page leads to the code page.
	login := func(b *browser) string {
		t.Helper()
		b.get("/login")
		a := b.post("/login", url.Values{"email": {email}, "password": {"correct horse battery"}, "next": {"/tenants/acme/devices"}})
		m := mfaTokenOn.FindStringSubmatch(a.body)
		if a.status != 200 || m == nil {
			t.Fatalf("login with two-factor on: %d, no code form:\n%s", a.status, a.body)
		}
		if a := b.get("/tenants/acme"); a.status != http.StatusSeeOther {
			t.Fatalf("after the password alone the console answered %d, want a redirect to log in", a.status)
		}
		return m[1]
	}
	b2 := s.browser()
	tok := login(b2)
	if a := b2.post("/login/mfa", url.Values{"mfa_token": {tok}, "code": {"000000x"}, "next": {"/tenants/acme/devices"}}); a.status != 401 || !strings.Contains(a.body, "wrong or was used") {
		t.Fatalf("a wrong code: %d\n%s", a.status, a.body)
	}
	// The code that turned it on is spent; the next step's is accepted
	// (a step of drift either way).
	a := b2.post("/login/mfa", url.Values{"mfa_token": {tok}, "code": {totpCode(t, secret, time.Now().Add(30*time.Second))}, "next": {"/tenants/acme/devices"}})
	if a.status != http.StatusSeeOther || a.location != "/tenants/acme/devices" {
		t.Fatalf("the right code: %d %q\n%s", a.status, a.location, a.body)
	}
	if a := b2.get("/tenants/acme/devices"); a.status != 200 {
		t.Fatalf("signed in with the code, the devices page answered %d", a.status)
	}

	// A recovery code signs in once.
	b3 := s.browser()
	tok = login(b3)
	if a := b3.post("/login/mfa", url.Values{"mfa_token": {tok}, "code": {codes[0]}}); a.status != http.StatusSeeOther {
		t.Fatalf("a recovery code: %d\n%s", a.status, a.body)
	}
	b4 := s.browser()
	tok = login(b4)
	if a := b4.post("/login/mfa", url.Values{"mfa_token": {tok}, "code": {codes[0]}}); a.status != 401 {
		t.Fatalf("a recovery code again: %d, want 401", a.status)
	}

	// The owner requires it; a member without it is refused every page
	// of the tenant, with the way to turn it on.
	m := s.browser()
	memberEmail := m.signup("member")
	if a := b.post("/tenants/acme/members", url.Values{"email": {memberEmail}, "role": {"admin"}}); a.status != http.StatusSeeOther {
		t.Fatalf("add member: %d %s", a.status, a.body)
	}
	if a := m.get("/tenants/acme/access"); a.status != 200 {
		t.Fatalf("the member's access page before the requirement: %d", a.status)
	}
	if a := m.post("/tenants/acme/access/mfa", url.Values{"required": {"on"}}); a.status != 403 {
		t.Errorf("an admin requires two-factor: %d, want 403", a.status)
	}
	if a := b.post("/tenants/acme/access/mfa", url.Values{"required": {"on"}}); a.status != http.StatusSeeOther {
		t.Fatalf("the owner requires two-factor: %d %s", a.status, a.body)
	}
	if a := b.get("/tenants/acme/access?done=mfa-required"); !strings.Contains(a.body, "<strong>must</strong>") {
		t.Errorf("the access page does not say it is required:\n%s", a.body)
	}
	for _, p := range []string{"/tenants/acme", "/tenants/acme/devices", "/tenants/acme/access"} {
		a := m.get(p)
		if a.status != 403 || !strings.Contains(a.body, "requires two-factor sign-in") || !strings.Contains(a.body, `href="/account/two-factor"`) {
			t.Errorf("%s for a member without two-factor: %d\n%s", p, a.status, a.body)
		}
	}
	m.turnOnMFA()
	if a := m.get("/tenants/acme/devices"); a.status != 200 {
		t.Errorf("the member with two-factor on: %d, want 200", a.status)
	}
}
