package web_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/internal/oidctest"
)

// newSSOStack is a console with one single sign-on issuer, a real OpenID
// Connect provider run by the test.
func newSSOStack(t *testing.T) (*stack, *oidctest.Provider, string) {
	t.Helper()
	idp := oidctest.New("roost-console", "client-secret-0123456789")
	t.Cleanup(idp.Close)
	s, dir := newMailStack(t, func(ac *auth.Config) {
		ac.OIDC = []auth.OIDCIssuer{{Name: "testidp", Label: "Test IdP", Issuer: idp.URL, ClientID: idp.ClientID, ClientSecret: idp.ClientSecret}}
	})
	return s, idp, dir
}

// ssoToIssuer starts a sign-in and follows the issuer's answer back: it
// returns the callback URL the issuer sent the browser to.
func (b *browser) ssoToIssuer(next string) string {
	t := b.s.t
	t.Helper()
	a := b.get("/login/sso/testidp?next=" + url.QueryEscape(next))
	if a.status != http.StatusSeeOther {
		t.Fatalf("start single sign-on: %d %s", a.status, a.body)
	}
	u, _ := url.Parse(a.location)
	q := u.Query()
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("state") == "" || q.Get("nonce") == "" ||
		q.Get("redirect_uri") != b.s.url+"/login/sso/testidp/callback" {
		t.Fatalf("the authorization request lacks PKCE, state, nonce or the callback: %s", a.location)
	}
	resp, err := b.http.Get(a.location)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("the issuer answered %d", resp.StatusCode)
	}
	return resp.Header.Get("Location")
}

// callback opens the callback URL in the browser.
func (b *browser) callback(u string) answer {
	b.s.t.Helper()
	resp, err := b.http.Get(u)
	if err != nil {
		b.s.t.Fatal(err)
	}
	return b.read(resp)
}

// TestConsoleSSO: single sign-on against a real OpenID Connect provider:
// a new person gets an account (email verified by the issuer); a person
// with an account is linked to it by the verified email; an unverified
// email, a changed state, a foreign nonce, another audience and a replayed
// callback are refused; two-factor sign-in still asks for its code.
func TestConsoleSSO(t *testing.T) {
	s, idp, _ := newSSOStack(t)
	ctx := context.Background()

	if a := s.browser().get("/login"); !strings.Contains(a.body, `href="/login/sso/testidp`) || !strings.Contains(a.body, "Sign in with Test IdP") {
		t.Fatalf("no single sign-on button on the login page:\n%s", a.body)
	}

	// A new person.
	idp.SignIn(oidctest.Person{Subject: "sub-ada", Email: "Ada@Example.com", EmailVerified: true})
	b := s.browser()
	a := b.callback(b.ssoToIssuer("/tenants"))
	if a.status != http.StatusSeeOther || a.location != "/tenants" {
		t.Fatalf("callback: %d %q\n%s", a.status, a.location, a.body)
	}
	if a := b.get("/tenants"); a.status != 200 || !strings.Contains(a.body, "ada@example.com") {
		t.Fatalf("signed in by single sign-on, /tenants answered %d", a.status)
	}
	ada, err := s.store.IdentityAccount(ctx, idp.URL, "sub-ada")
	if err != nil || ada.Email != "ada@example.com" || !ada.EmailVerified {
		t.Fatalf("the new account: %+v, %v; want ada@example.com, verified", ada, err)
	}
	// The same person again: the same account.
	b = s.browser()
	b.callback(b.ssoToIssuer("/"))
	if again, _ := s.store.IdentityAccount(ctx, idp.URL, "sub-ada"); again.ID != ada.ID {
		t.Errorf("a second sign-in made another account")
	}

	// A person with a password account is linked by the verified email.
	pw := s.browser()
	email := pw.signup("grace")
	idp.SignIn(oidctest.Person{Subject: "sub-grace", Email: email, EmailVerified: true})
	b = s.browser()
	if a := b.callback(b.ssoToIssuer("/")); a.status != http.StatusSeeOther {
		t.Fatalf("link by email: %d %s", a.status, a.body)
	}
	linked, _ := s.store.IdentityAccount(ctx, idp.URL, "sub-grace")
	mine, _ := s.store.Authenticate(ctx, email, "correct horse battery")
	if linked.ID == "" || linked.ID != mine.ID {
		t.Errorf("single sign-on of %s linked %q, want the password account %q", email, linked.ID, mine.ID)
	}

	// Refusals.
	idp.SignIn(oidctest.Person{Subject: "sub-eve", Email: "eve@example.com", EmailVerified: false})
	b = s.browser()
	if a := b.callback(b.ssoToIssuer("/")); a.status != http.StatusForbidden || !strings.Contains(a.body, "email_verified") {
		t.Errorf("an unverified email: %d\n%s", a.status, a.body)
	}
	if _, err := s.store.Authenticate(ctx, "eve@example.com", "x"); err == nil {
		t.Error("an account was made for an unverified email")
	}
	idp.SignIn(oidctest.Person{Subject: "sub-ada", Email: "ada@example.com", EmailVerified: true})
	refused := func(what string, tamper func(string) string) {
		t.Helper()
		b := s.browser()
		cb := tamper(b.ssoToIssuer("/"))
		a := b.callback(cb)
		if a.status != http.StatusUnauthorized || a.header.Get("Set-Cookie") == "" || strings.Contains(a.header.Get("Set-Cookie"), "roost_session=e") {
			t.Errorf("%s: %d, want 401 and no session\n%s", what, a.status, a.body)
		}
		if a := b.get("/tenants"); a.status != http.StatusSeeOther {
			t.Errorf("%s: signed in all the same", what)
		}
	}
	refused("another state", func(cb string) string {
		u, _ := url.Parse(cb)
		q := u.Query()
		q.Set("state", "forged")
		u.RawQuery = q.Encode()
		return u.String()
	})
	idp.Tamper(func(c map[string]any) { c["nonce"] = "someone-elses" })
	refused("a foreign nonce", func(cb string) string { return cb })
	idp.Tamper(func(c map[string]any) { c["aud"] = "another-client" })
	refused("another audience", func(cb string) string { return cb })
	idp.Tamper(func(c map[string]any) { c["iss"] = "https://evil.example" })
	refused("another issuer", func(cb string) string { return cb })
	idp.Tamper(nil)
	// A callback without the browser's state cookie (another browser).
	b = s.browser()
	cb := b.ssoToIssuer("/")
	if a := s.browser().callback(cb); a.status != http.StatusUnauthorized {
		t.Errorf("the callback in another browser: %d, want 401", a.status)
	}
	// The callback once more, after it worked: its state is used up.
	b = s.browser()
	cb = b.ssoToIssuer("/")
	if a := b.callback(cb); a.status != http.StatusSeeOther {
		t.Fatalf("callback: %d", a.status)
	}
	if a := b.callback(cb); a.status != http.StatusUnauthorized {
		t.Errorf("a replayed callback: %d, want 401", a.status)
	}

	// Two-factor sign-in still asks for its code.
	b = s.browser()
	b.callback(b.ssoToIssuer("/"))
	b.turnOnMFA()
	b = s.browser()
	if a := b.callback(b.ssoToIssuer("/tenants")); a.status != 200 || !strings.Contains(a.body, `name="mfa_token"`) {
		t.Errorf("single sign-on of an account with two-factor on: %d, want the code page\n%s", a.status, a.body)
	}

	// An issuer that is not configured.
	if a := s.browser().get("/login/sso/nope"); a.status != 404 {
		t.Errorf("an unknown issuer: %d, want 404", a.status)
	}
}
