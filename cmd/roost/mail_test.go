package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/smtptest"
	"github.com/roosthub/roost/mail"
)

// TestServeSMTP: with ROOST_SMTP_URL, `roost serve` sends its account mails
// through that server (here a local relay of the test's own, which takes
// AUTH PLAIN on loopback without TLS): the sign-up's verification link and
// a password-reset link arrive there, and work; nothing is written to the
// mail folder.
func TestServeSMTP(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Config{User: "roost", Pass: "relay pass"})
	dataDir := t.TempDir()
	h := startServe(t, map[string]string{
		"ROOST_DATA_DIR":   dataDir,
		"ROOST_SMTP_URL":   "smtp://roost:relay%20pass@127.0.0.1:" + srv.Port,
		"ROOST_MAIL_FROM":  "Hub <hub@example.com>",
		"ROOST_PUBLIC_URL": "https://hub.example.com",
	})
	status, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "smtp@example.com", "password": "correct horse battery"})
	if status != 201 {
		t.Fatalf("signup: %d %v", status, m)
	}
	token := regexp.MustCompile(`https://hub\.example\.com/verify\?token=([A-Za-z0-9_.-]+)`)
	got := waitSMTP(t, srv, "smtp@example.com", "Confirm your email")
	g := token.FindStringSubmatch(got.Text)
	if g == nil {
		t.Fatalf("the verification mail links no https://hub.example.com/verify page:\n%s", got.Text)
	}
	// Not signed in, the link needs the account's password too.
	if status, r := post(t, h.url+"/v1/verify", "", map[string]string{"token": g[1]}); status != 400 || r["code"] != "password_required" {
		t.Fatalf("verify with the mailed token alone: %d %v, want 400 password_required", status, r)
	}
	if status, r := post(t, h.url+"/v1/verify", "", map[string]string{"token": g[1], "password": "correct horse battery"}); status != 200 || r["email_verified"] != true {
		t.Fatalf("verify with the mailed token: %d %v", status, r)
	}
	if status, _ := post(t, h.url+"/v1/password/forgot", "", map[string]string{"email": "smtp@example.com"}); status != 202 {
		t.Fatalf("forgot: %d", status)
	}
	got = waitSMTP(t, srv, "smtp@example.com", "Reset your Roost password")
	g = regexp.MustCompile(`/password/reset\?token=([A-Za-z0-9_.-]+)`).FindStringSubmatch(got.Text)
	if g == nil {
		t.Fatalf("the reset mail holds no link:\n%s", got.Text)
	}
	if status, r := post(t, h.url+"/v1/password/reset", "", map[string]string{"token": g[1], "password": "a brand new password"}); status != 204 {
		t.Fatalf("reset with the mailed token: %d %v", status, r)
	}
	for _, s := range srv.Messages() {
		if !s.Authed || s.From != "hub@example.com" {
			t.Errorf("a session: authenticated %v, from %q; want AUTH PLAIN and hub@example.com", s.Authed, s.From)
		}
	}
	if ms, _ := mail.ReadFolder(dataDir + "/mail"); len(ms) != 0 {
		t.Errorf("with SMTP set, %d mails were written to the folder", len(ms))
	}
}

// waitSMTP waits (up to 20 s) for a message to to whose subject holds
// subject.
func waitSMTP(t *testing.T, srv *smtptest.Server, to, subject string) mail.Message {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, s := range srv.Messages() {
			m, err := mail.Parse(s.Data)
			if err != nil {
				t.Fatalf("a malformed message: %v\n%s", err, s.Data)
			}
			if m.To == to && strings.Contains(m.Subject, subject) {
				return m
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no mail %q to %s reached the SMTP server in 20 s (%d messages)", subject, to, len(srv.Messages()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
