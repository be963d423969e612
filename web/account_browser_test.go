package web_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/roosthub/roost/internal/oidctest"
)

// TestBrowserTwoFactorInviteSSO is a team's story in Chromium: the owner
// turns on two-factor sign-in with a code the test computes from the secret
// on the page, logs in with a code and with a recovery code, invites a
// second person, who signs up from the mailed link and accepts; the owner
// requires two-factor of every member; the second person signs in with
// single sign-on at the in-test provider and is told to turn it on.
func TestBrowserTwoFactorInviteSSO(t *testing.T) {
	s, idp, dir := newSSOStack(t)
	ctx := chrome(t)
	b := steps{t, ctx, s}
	run, text := b.run, b.text
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	logOut := func() {
		t.Helper()
		run("log out", chromedp.Click(css(`form[action="/logout"] button`)), chromedp.WaitVisible(css(`#password`)))
	}

	run("sign up",
		chromedp.Navigate(s.url+"/signup"),
		chromedp.WaitVisible(css(`#password2`)),
		chromedp.SendKeys(css(`#email`), "owner@example.com"),
		chromedp.SendKeys(css(`#password`), "correct horse battery"),
		chromedp.SendKeys(css(`#password2`), "correct horse battery"),
		chromedp.Submit(css(`#password2`)),
		chromedp.WaitVisible(css(`#slug`)),
	)
	verify(t, s, "owner@example.com")
	run("create tenant", chromedp.SendKeys(css(`#slug`), "acme"), chromedp.SendKeys(css(`#name`), "Acme"), chromedp.Submit(css(`#slug`)), chromedp.WaitVisible(css(`nav.tabs`)))

	run("set up two-factor",
		chromedp.Navigate(s.url+"/account/two-factor"),
		chromedp.Click(css(`form[action="/account/two-factor/setup"] button`)),
		chromedp.WaitVisible(css(`#mfa-qr`)),
	)
	secret := text(`#mfa-secret`)
	screenshot(t, ctx, "mfa-01-setup")
	run("turn it on", chromedp.SendKeys(css(`#code`), totpCode(t, secret, time.Now())), chromedp.Submit(css(`#code`)), chromedp.WaitVisible(css(`#recovery-codes`)))
	codes := regexp.MustCompile(`[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}`).FindAllString(text(`#recovery-codes`), -1)
	if len(codes) != 10 {
		t.Fatalf("%d recovery codes on the page, want 10", len(codes))
	}
	screenshot(t, ctx, "mfa-02-recovery-codes")

	login := func(code string) {
		t.Helper()
		run("log in with the password",
			chromedp.Navigate(s.url+"/login"),
			chromedp.WaitVisible(css(`#password`)),
			chromedp.SendKeys(css(`#email`), "owner@example.com"),
			chromedp.SendKeys(css(`#password`), "correct horse battery"),
			chromedp.Submit(css(`#password`)),
			chromedp.WaitVisible(css(`form[action="/login/mfa"] #code`)),
		)
		run("give the second factor", chromedp.SendKeys(css(`#code`), code), chromedp.Submit(css(`#code`)), chromedp.WaitVisible(css(`form[action="/logout"]`)))
	}
	logOut()
	// The code that turned it on is spent: the next step's is accepted.
	login(totpCode(t, secret, time.Now().Add(30*time.Second)))
	logOut()
	login(codes[0])

	run("invite a second person",
		chromedp.Navigate(s.url+"/tenants/acme/access"),
		chromedp.WaitVisible(css(`#i-email`)),
		chromedp.SendKeys(css(`#i-email`), "second@example.com"),
		chromedp.SetValue(css(`#i-role`), "admin"),
		chromedp.Submit(css(`#i-email`)),
		chromedp.WaitVisible(css(`#invites`)),
	)
	screenshot(t, ctx, "mfa-03-invite")
	link := waitInvite(t, dir, "second@example.com")
	logOut()
	run("sign up from the invite",
		chromedp.Navigate(s.url+link),
		chromedp.WaitVisible(css(`#password2`)),
		chromedp.SendKeys(css(`#password`), "another horse battery"),
		chromedp.SendKeys(css(`#password2`), "another horse battery"),
		chromedp.Submit(css(`#password2`)),
		chromedp.WaitVisible(css(`#accept-invite`)),
	)
	verifyWith(t, s, "second@example.com", "another horse battery")
	run("accept", chromedp.Click(css(`#accept-invite`)), chromedp.WaitVisible(css(`.flash`)))
	if f := text(`.flash`); !strings.Contains(f, "joined") {
		t.Errorf("flash after accepting: %q", f)
	}
	logOut()

	login(codes[1])
	run("require two-factor of every member",
		chromedp.Navigate(s.url+"/tenants/acme/access"),
		chromedp.WaitVisible(css(`#require-mfa`)),
		chromedp.Click(css(`#require-mfa`)),
		chromedp.Submit(css(`#require-mfa`)),
		chromedp.WaitVisible(css(`.flash`)),
	)
	if m := text(`#mfa-required`); !strings.Contains(m, "must") {
		t.Errorf("the access page after requiring: %q", m)
	}
	logOut()

	idp.SignIn(oidctest.Person{Subject: "sub-second", Email: "second@example.com", EmailVerified: true})
	run("single sign-on",
		chromedp.Navigate(s.url+"/login?next=/tenants/acme"),
		chromedp.WaitVisible(css(`#sso a`)),
		chromedp.Click(css(`#sso a`)),
		chromedp.WaitVisible(css(`#error-back`)),
	)
	if m := text(`main .error`); !strings.Contains(m, "requires two-factor sign-in") {
		t.Errorf("after single sign-on into a tenant that requires two-factor: %q", m)
	}
	screenshot(t, ctx, "mfa-04-sso-requirement")
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	loc, err := chromedp.Run(sctx, chromedp.Location())
	if err != nil || !strings.HasSuffix(loc, "/tenants/acme") {
		t.Errorf("after single sign-on the browser is at %q (%v), want /tenants/acme", loc, err)
	}
	if idp.Exchanged == 0 {
		t.Error("the provider exchanged no code")
	}
}
