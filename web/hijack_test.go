package web_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestConsoleVerifyNeedsTheAccount: someone signs up in the console with
// another person's email. The mailed link, opened by the mailbox's owner
// (not signed in) or by a stranger signed in as someone else, asks for
// the account's password, offers a reset instead, and without the
// password verifies nothing. Opened in a browser signed in as the account
// it verifies with one click, keeps that session and ends the others.
func TestConsoleVerifyNeedsTheAccount(t *testing.T) {
	s := newStack(t)
	seen := map[string]bool{}
	squatter := s.browser()
	squatter.get("/signup")
	const victim = "victim@example.com"
	if a := squatter.post("/signup", url.Values{"email": {victim}, "password": {"the squatter's password"}, "password2": {"the squatter's password"}}); a.status != http.StatusSeeOther {
		t.Fatalf("the squatter's sign-up: %d", a.status)
	}
	link := s.waitMailLink(victim, "Confirm your email", seen)
	token, _ := url.ParseQuery(strings.TrimPrefix(link, "/verify?"))

	owner := s.browser() // the mailbox's owner, not signed in
	stranger := s.browser()
	stranger.signup("stranger")
	for name, b := range map[string]*browser{"the mailbox's owner": owner, "a stranger signed in as themselves": stranger} {
		a := b.get(link)
		if a.status != http.StatusOK || !strings.Contains(a.body, `id="password"`) || !strings.Contains(a.body, `id="not-mine"`) ||
			!strings.Contains(a.body, `href="/password/forgot?email=victim%40example.com"`) {
			t.Errorf("%s opens the link: %d, want a password field and a way to reset instead:\n%s", name, a.status, a.body)
		}
		a = b.post("/verify", url.Values{"token": {token.Get("token")}})
		if a.status != http.StatusBadRequest || !strings.Contains(a.body, "Enter the password of this account") {
			t.Errorf("%s clicks without the password: %d, want 400 asking for it", name, a.status)
		}
		a = b.post("/verify", url.Values{"token": {token.Get("token")}, "password": {"correct horse battery"}})
		if a.status != http.StatusBadRequest || !strings.Contains(a.body, "is not this account") {
			t.Errorf("%s clicks with another password: %d, want 400", name, a.status)
		}
	}
	if a, _ := s.store.Authenticate(t.Context(), victim, "the squatter's password"); a.EmailVerified {
		t.Fatal("the squatter's account is verified by clicks without its password")
	}
	if a := owner.get("/password/forgot?email=victim%40example.com"); !strings.Contains(a.body, `value="victim@example.com"`) {
		t.Errorf("the reset page from the link does not fill in the email")
	}
	if a := owner.get("/verify?token=tok_x.y"); a.status != http.StatusBadRequest || !strings.Contains(a.body, "This link is not valid") {
		t.Errorf("a made-up link: %d, want 400 saying it is not valid", a.status)
	}

	// The account's own browser: one click; its other session ends.
	other := s.browser()
	other.get("/login")
	if a := other.post("/login", url.Values{"email": {victim}, "password": {"the squatter's password"}}); a.status != http.StatusSeeOther {
		t.Fatalf("a second login: %d", a.status)
	}
	a := squatter.get(link)
	if a.status != http.StatusOK || strings.Contains(a.body, `id="password"`) || strings.Contains(a.body, `id="not-mine"`) {
		t.Errorf("the account's own browser opens the link: %d, want a button alone", a.status)
	}
	a = squatter.post("/verify", url.Values{"token": {token.Get("token")}})
	if a.status != http.StatusOK || !strings.Contains(a.body, `id="verified"`) || !strings.Contains(a.body, "Every other session of the account was signed out") {
		t.Errorf("verify signed in as the account: %d:\n%s", a.status, a.body)
	}
	if a := squatter.get("/account"); a.status != http.StatusOK {
		t.Errorf("the browser that verified: %d, want it signed in", a.status)
	}
	if a := other.get("/account"); a.status != http.StatusSeeOther {
		t.Errorf("the account's other browser after the verification: %d, want it signed out", a.status)
	}
}

// TestConsoleVerifyWithPassword: not signed in, the account's password
// verifies; every session of the account ends, and the page says to log in.
func TestConsoleVerifyWithPassword(t *testing.T) {
	s := newStack(t)
	ada := s.browser()
	ada.get("/signup")
	if a := ada.post("/signup", url.Values{"email": {"ada@example.com"}, "password": {"correct horse battery"}, "password2": {"correct horse battery"}}); a.status != http.StatusSeeOther {
		t.Fatalf("sign-up: %d", a.status)
	}
	link := s.waitMailLink("ada@example.com", "Confirm your email", map[string]bool{})
	token, _ := url.ParseQuery(strings.TrimPrefix(link, "/verify?"))
	phone := s.browser()
	phone.get(link)
	a := phone.post("/verify", url.Values{"token": {token.Get("token")}, "password": {"correct horse battery"}})
	if a.status != http.StatusOK || !strings.Contains(a.body, `id="verified"`) || !strings.Contains(a.body, `href="/login"`) {
		t.Errorf("verify with the password: %d, want verified and a way to log in:\n%s", a.status, a.body)
	}
	if a := ada.get("/account"); a.status != http.StatusSeeOther {
		t.Errorf("the sign-up's session after a verification elsewhere: %d, want it signed out", a.status)
	}
}
