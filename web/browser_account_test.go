package web_test

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/roosthub/roost/mail"
)

var linkInMail = regexp.MustCompile(`(/(?:verify|password/reset)\?token=[A-Za-z0-9_.%-]+)`)

// waitMailLink polls the stack's mail folder (up to 20 s: mails leave in
// the background) for a new mail to to whose subject holds subject, and
// returns the console path its link points at.
func (s *stack) waitMailLink(to, subject string, seen map[string]bool) string {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ms, err := mail.ReadFolder(s.mailDir)
		if err != nil {
			s.t.Fatal(err)
		}
		for _, m := range ms {
			if m.To != to || !strings.Contains(m.Subject, subject) || seen[m.Text] {
				continue
			}
			seen[m.Text] = true
			g := linkInMail.FindStringSubmatch(m.Text)
			if g == nil {
				s.t.Fatalf("the mail %q holds no console link:\n%s", m.Subject, m.Text)
			}
			return g[1]
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no mail %q to %s within 20 s (%d mails in the folder)", subject, to, len(ms))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBrowserAccountStory is a person's account in a real browser: sign up,
// read the verification mail from the mail folder and verify (signed in,
// one click; the other session from before ends); forget the
// password, follow the reset mail and choose a new one; the sessions from
// before the reset are gone (this browser's and another's); sign in again
// and find each step in the account's activity and the tenant's audit
// trail, both downloadable as CSV.
func TestBrowserAccountStory(t *testing.T) {
	s := newStack(t)
	ctx := chrome(t)
	b := steps{t, ctx, s}
	run, text, wait := b.run, b.text, b.wait
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	const email = "story@example.com"
	seen := map[string]bool{}

	run("sign up and create a tenant",
		chromedp.Navigate(s.url+"/signup"),
		chromedp.WaitVisible(css(`#password2`)),
		chromedp.SendKeys(css(`#email`), email),
		chromedp.SendKeys(css(`#password`), "correct horse battery"),
		chromedp.SendKeys(css(`#password2`), "correct horse battery"),
		chromedp.Submit(css(`#password2`)),
		chromedp.WaitVisible(css(`#slug`)),
		chromedp.SendKeys(css(`#slug`), "story"),
		chromedp.Submit(css(`#slug`)),
		chromedp.WaitNotPresent(css(`#slug`)), // off the tenants page, whose form has a #name too
		chromedp.WaitVisible(css(`#name`)),
		chromedp.Navigate(s.url+"/account"),
		chromedp.WaitVisible(css(`#email-state`)),
	)
	if got := text(`#email-state`); got != "not verified yet" {
		t.Errorf("the account page says the email is %q, want not verified yet", got)
	}
	// Adding a member waits for the verification.
	otherEmail := s.browser().signup("other") // verified through the store, a member to be
	owner := s.browser()
	owner.get("/login")
	if a := owner.post("/login", url.Values{"email": {email}, "password": {"correct horse battery"}}); a.status != http.StatusSeeOther {
		t.Fatalf("the second session's login: %d", a.status)
	}
	owner.get("/tenants/story/members")
	if a := owner.post("/tenants/story/members", url.Values{"email": {"x@example.com"}, "role": {"viewer"}}); a.status != http.StatusForbidden || !strings.Contains(a.body, "Verify your email first") {
		t.Errorf("adding a member unverified: %d, want 403 asking to verify first", a.status)
	}

	link := s.waitMailLink(email, "Confirm your email", seen)
	run("verify with the mailed link",
		chromedp.Navigate(s.url+link),
		chromedp.WaitVisible(css(`main form button[type=submit]`)),
		chromedp.Click(css(`main form button[type=submit]`)),
		chromedp.WaitVisible(css(`#verified`)),
	)
	screenshot(t, ctx, "30-email-verified")
	// The first verification ended the session from before it (the
	// other browser's); that browser signs in again.
	if a := owner.get("/account"); a.status != http.StatusSeeOther || !strings.HasPrefix(a.location, "/login") {
		t.Errorf("the other session after the verification: %d %s, want a redirect to /login", a.status, a.location)
	}
	owner.get("/login")
	if a := owner.post("/login", url.Values{"email": {email}, "password": {"correct horse battery"}}); a.status != http.StatusSeeOther {
		t.Fatalf("the second session's login after the verification: %d", a.status)
	}
	run("the account page says verified",
		chromedp.Navigate(s.url+"/account"),
		chromedp.WaitVisible(css(`#email-state`)),
	)
	if got := text(`#email-state`); got != "verified" {
		t.Errorf("after verifying, the account page says %q, want verified", got)
	}
	if got := text(`#sessions tbody`); !strings.Contains(got, "this session") || strings.Count(got, "Sign out") != 1 {
		t.Errorf("the sessions table = %q, want this session and one other with a Sign out button", got)
	}
	screenshot(t, ctx, "31-account")

	run("forgot password",
		chromedp.Navigate(s.url+"/login"),
		chromedp.WaitVisible(css(`a[href="/password/forgot"]`)),
		chromedp.Click(css(`a[href="/password/forgot"]`)),
		chromedp.WaitVisible(css(`form[action="/password/forgot"] #email`)), // not the login form's
		chromedp.SendKeys(css(`form[action="/password/forgot"] #email`), email),
		chromedp.Submit(css(`form[action="/password/forgot"] #email`)),
		chromedp.WaitVisible(css(`main p[role=status]`)),
	)
	link = s.waitMailLink(email, "Reset your Roost password", seen)
	if !strings.HasPrefix(link, "/password/reset?token=") {
		t.Fatalf("the reset mail links %s", link)
	}
	run("reset with the mailed link",
		chromedp.Navigate(s.url+link),
		chromedp.WaitVisible(css(`#password2`)),
		chromedp.SendKeys(css(`#password`), "a brand new password"),
		chromedp.SendKeys(css(`#password2`), "a brand new password"),
		chromedp.Submit(css(`#password2`)),
		chromedp.WaitVisible(css(`p.flash`)),
	)
	screenshot(t, ctx, "32-password-reset")
	if got := text(`p.flash`); !strings.Contains(got, "every session was signed out") {
		t.Errorf("after the reset the login page says %q", got)
	}
	// The sessions from before the reset are gone: the other browser's
	// cookie leads to the login page now.
	if a := owner.get("/account"); a.status != http.StatusSeeOther || !strings.HasPrefix(a.location, "/login") {
		t.Errorf("the other session after the reset: %d %s, want a redirect to /login", a.status, a.location)
	}
	run("this browser is signed out too",
		chromedp.Navigate(s.url+"/account"),
		chromedp.WaitVisible(css(`#password`)),
	)
	wait("the account page sent us to log in", `location.pathname === "/login"`)
	run("log in with the new password",
		chromedp.SendKeys(css(`#email`), email),
		chromedp.SendKeys(css(`#password`), "a brand new password"),
		chromedp.Submit(css(`#password`)),
		chromedp.WaitVisible(css(`#email-state`)), // back where it was going
		chromedp.Navigate(s.url+"/account/activity"),
		chromedp.WaitVisible(css(`#activity`)),
	)
	activity := text(`#activity`)
	for _, want := range []string{"account.create", "account.email_verify", "account.password_reset_request", "account.password_reset"} {
		if !strings.Contains(activity, want) {
			t.Errorf("the account's activity lacks %s:\n%s", want, activity)
		}
	}
	screenshot(t, ctx, "33-account-activity")
	csv := func(path string) string {
		t.Helper()
		sctx, cancel := b.step()
		defer cancel()
		v, err := chromedp.Run(sctx, chromedp.Evaluate[string](`fetch(`+"`"+path+"`"+`).then(async r => r.headers.get("content-type") + "\n" + await r.text())`, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("download %s: %v", path, err)
		}
		return v
	}
	if got := csv("/account/activity?format=csv"); !strings.HasPrefix(got, "text/csv") || !strings.Contains(got, "time,actor,action,object,id") || !strings.Contains(got, ",account.password_reset,") {
		t.Errorf("the activity CSV:\n%s", got)
	}

	// Now verified, the owner adds a member; the tenant's audit trail
	// shows it, filters by action and downloads what it shows.
	owner2 := s.browser()
	owner2.get("/login")
	owner2.post("/login", url.Values{"email": {email}, "password": {"a brand new password"}})
	owner2.get("/tenants/story/members")
	if a := owner2.post("/tenants/story/members", url.Values{"email": {otherEmail}, "role": {"viewer"}}); a.status != http.StatusSeeOther {
		t.Errorf("adding a member verified: %d, want 303", a.status)
	}
	run("the audit trail, filtered",
		chromedp.Navigate(s.url+"/tenants/story/audit"),
		chromedp.WaitVisible(css(`#audit`)),
		chromedp.SendKeys(css(`#action`), "tenant."),
		chromedp.Submit(css(`#action`)),
		chromedp.WaitVisible(css(`#audit-filtered`)), // on the filtered page only
	)
	if got := text(`#audit tbody`); !strings.Contains(got, "tenant.create") || strings.Contains(got, "member.") {
		t.Errorf("the audit trail filtered by tenant. = %q", got)
	}
	screenshot(t, ctx, "34-audit-filtered")
	sctx, cancel := b.step()
	exportURL, err := chromedp.Run(sctx, chromedp.Evaluate[string](`document.querySelector("#audit-csv").getAttribute("href")`))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	got := csv(exportURL)
	if !strings.HasPrefix(got, "text/csv") || !strings.Contains(got, ",tenant.create,") || strings.Contains(got, "member.") {
		t.Errorf("the filtered audit CSV (%s):\n%s", exportURL, got)
	}
	if all := csv("/tenants/story/audit/export"); !strings.Contains(all, ",tenant.create,") || !strings.Contains(all, ",member.add,") {
		t.Errorf("the whole audit CSV:\n%s", all)
	}
}
