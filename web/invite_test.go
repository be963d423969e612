package web_test

import (
	"bytes"
	"context"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/mail"
	"github.com/roosthub/roost/web"
)

// newMailStack is a console whose auth front mails to a folder, returned.
func newMailStack(t *testing.T, configure func(*auth.Config)) (*stack, string) {
	t.Helper()
	var dir string
	s := newStackWith(t, func(cfg *web.Config) {
		m, err := mail.NewFolder(filepath.Join(t.TempDir(), "mail"), "roost@example.com", nil)
		if err != nil {
			t.Fatal(err)
		}
		dir = m.Dir()
		ac := auth.Config{Store: cfg.Store, SigningKey: cfg.SigningKey, AdminToken: cfg.AdminToken, Log: cfg.Log, Mailer: m}
		if configure != nil {
			configure(&ac)
		}
		a, err := auth.New(ac)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Close)
		cfg.Auth = a
	})
	return s, dir
}

var inviteLink = regexp.MustCompile(`(/invite\?token=[A-Za-z0-9_%.-]+)`)

// waitInvite polls the mail folder (20 s) for an invite to email and
// returns the link's path and query.
func waitInvite(t *testing.T, dir, email string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ms, _ := mail.ReadFolder(dir)
		for _, m := range ms {
			if m.To == email && strings.Contains(m.Subject, "invited you") {
				if g := inviteLink.FindStringSubmatch(m.Text); g != nil {
					return g[1]
				}
				t.Fatalf("an invite mail without a link:\n%s", m.Text)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no invite mail to %s in 20 s (%d mails)", email, len(ms))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// verify marks an account's email verified through the store, as
// following the mailed link does.
func verify(t *testing.T, s *stack, email string) {
	t.Helper()
	verifyWith(t, s, email, "correct horse battery")
}

func verifyWith(t *testing.T, s *stack, email, password string) {
	t.Helper()
	ctx := context.Background()
	a, err := s.store.Authenticate(ctx, email, password)
	if err != nil {
		t.Fatal(err)
	}
	if a.EmailVerified { // the harness's sign-up verifies
		return
	}
	s.verifyAccount(a.ID)
}

// TestConsoleInvites: an admin invites an email on the Access page; the
// mailed link lets a new person sign up with that email and, verified,
// accept; someone signed in with another email cannot; a revoked invite's
// link shows it is no longer valid.
func TestConsoleInvites(t *testing.T) {
	s, dir := newMailStack(t, nil)
	owner := s.browser()
	ownerEmail := owner.signup("owner")
	verify(t, s, ownerEmail)
	owner.tenant("acme")
	owner.get("/tenants/acme/access")
	if a := owner.post("/tenants/acme/invites", url.Values{"email": {"Friend@Example.com"}, "role": {"admin"}}); a.status != http.StatusSeeOther {
		t.Fatalf("invite: %d %s", a.status, a.body)
	}
	if a := owner.get("/tenants/acme/access?done=invited"); !strings.Contains(a.body, "friend@example.com") || !strings.Contains(a.body, "Invite sent.") {
		t.Errorf("the access page does not list the invite:\n%s", a.body)
	}
	link := waitInvite(t, dir, "friend@example.com")

	// Someone signed in with another email sees it is not theirs.
	if a := owner.get(link); a.status != 200 || !strings.Contains(a.body, "this invite is for friend@example.com") || strings.Contains(a.body, `id="accept-invite"`) {
		t.Errorf("the invite page for another account: %d\n%s", a.status, a.body)
	}
	if a := owner.post("/invite/accept", url.Values{"token": {strings.TrimPrefix(link, "/invite?token=")}}); a.status != 403 {
		t.Errorf("accept with another account: %d, want 403", a.status)
	}

	// The new person signs up from the link.
	friend := s.browser()
	a := friend.get(link)
	if a.status != 200 || !strings.Contains(a.body, `value="friend@example.com" readonly`) {
		t.Fatalf("the invite page for a new person: %d\n%s", a.status, a.body)
	}
	tok, _ := url.QueryUnescape(strings.TrimPrefix(link, "/invite?token="))
	a = friend.post("/invite/signup", url.Values{"token": {tok}, "password": {"correct horse battery"}, "password2": {"correct horse battery"}})
	if a.status != http.StatusSeeOther || !strings.HasPrefix(a.location, "/invite?token=") {
		t.Fatalf("sign up from the invite: %d %q\n%s", a.status, a.location, a.body)
	}
	a = friend.get(a.location)
	if !strings.Contains(a.body, `id="accept-invite"`) {
		t.Fatalf("the invite page after signing up has no accept button:\n%s", a.body)
	}
	if a := friend.post("/invite/accept", url.Values{"token": {tok}}); a.status != 403 || !strings.Contains(a.body, "Verify your email first") {
		t.Fatalf("accept unverified: %d\n%s", a.status, a.body)
	}
	verify(t, s, "friend@example.com")
	a = friend.post("/invite/accept", url.Values{"token": {tok}})
	if a.status != http.StatusSeeOther || a.location != "/tenants/acme?done=invite-accepted" {
		t.Fatalf("accept: %d %q\n%s", a.status, a.location, a.body)
	}
	if a := friend.get("/tenants/acme/devices"); a.status != 200 {
		t.Errorf("the new member's devices page: %d", a.status)
	}
	if a := friend.get(link); a.status != 404 {
		t.Errorf("the used link: %d, want 404", a.status)
	}

	// Revoked from the Access page: the link stops working.
	owner.get("/tenants/acme/access")
	owner.post("/tenants/acme/invites", url.Values{"email": {"late@example.com"}, "role": {"viewer"}})
	late := waitInvite(t, dir, "late@example.com")
	a = owner.get("/tenants/acme/access")
	id := regexp.MustCompile(`/tenants/acme/invites/(inv_[a-z0-9]+)/delete`).FindStringSubmatch(a.body)
	if id == nil {
		t.Fatalf("no revoke button:\n%s", a.body)
	}
	if a := owner.post("/tenants/acme/invites/"+id[1]+"/delete", nil); a.status != http.StatusSeeOther {
		t.Fatalf("revoke: %d %s", a.status, a.body)
	}
	if a := s.browser().get(late); a.status != 404 || !strings.Contains(a.body, "not valid") {
		t.Errorf("a revoked invite's link: %d", a.status)
	}
	// The new admin may invite too.
	if a := friend.get("/tenants/acme/access"); a.status != 200 || !bytes.Contains([]byte(a.body), []byte("Send invite")) {
		t.Errorf("an admin's access page: %d", a.status)
	}
}
