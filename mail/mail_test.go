package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/smtptest"
)

func TestRenderTemplates(t *testing.T) {
	tests := []struct {
		name    string
		data    any
		subject string
		want    string
	}{
		{TemplateVerify, map[string]any{"Link": "https://hub.example/verify?token=abc", "Hours": 48}, "Confirm your email for Roost", "https://hub.example/verify?token=abc"},
		{TemplateReset, map[string]any{"Link": "https://hub.example/reset?token=abc", "Minutes": 30}, "Reset your Roost password", "30 minutes"},
		{TemplatePasswordChanged, map[string]any{"When": "2026-12-03 10:00 UTC", "How": "reset"}, "Your Roost password was reset", "was reset at 2026-12-03 10:00 UTC"},
		{TemplateInvite, map[string]any{"Tenant": "acme", "Inviter": "ada@example.com", "Role": "admin", "Link": "https://x/i", "Days": 7}, "ada@example.com invited you to acme on Roost", "as admin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Render(tt.name, "bo@example.com", tt.data)
			if err != nil {
				t.Fatal(err)
			}
			if m.Subject != tt.subject {
				t.Errorf("subject = %q, want %q", m.Subject, tt.subject)
			}
			if !strings.Contains(m.Text, tt.want) || m.HTML == "" {
				t.Errorf("text = %q, want it to contain %q (and an HTML part)", m.Text, tt.want)
			}
			if err := m.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
	if _, err := Render("nope", "bo@example.com", nil); err == nil {
		t.Error("Render of an unknown template: got no error")
	}
	// HTML is escaped.
	m, err := Render(TemplateInvite, "bo@example.com", map[string]any{"Tenant": "<script>x</script>", "Inviter": "a", "Role": "viewer", "Link": "https://x", "Days": 7})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(m.HTML, "<script>") {
		t.Errorf("HTML holds an unescaped tenant name: %s", m.HTML)
	}
}

func TestMessageValidate(t *testing.T) {
	ok := Message{To: "a@example.com", Subject: "s", Text: "t"}
	tests := []struct {
		name string
		m    Message
	}{
		{"header in subject", Message{To: ok.To, Subject: "s\r\nBcc: x@example.com", Text: "t"}},
		{"two recipients", Message{To: "a@example.com, b@example.com", Subject: "s", Text: "t"}},
		{"named recipient", Message{To: "A <a@example.com>", Subject: "s", Text: "t"}},
		{"no subject", Message{To: ok.To, Text: "t"}},
		{"no text", Message{To: ok.To, Subject: "s"}},
	}
	for _, tt := range tests {
		if err := tt.m.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", tt.name, err)
		}
	}
	if err := ok.Validate(); err != nil {
		t.Errorf("Validate(ok) = %v", err)
	}
}

func TestFolderMailer(t *testing.T) {
	dir := t.TempDir()
	m, err := New("", dir, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	f := m.(*Folder)
	if f.Dir() != filepath.Join(dir, "mail") {
		t.Fatalf("Dir = %s, want %s", f.Dir(), filepath.Join(dir, "mail"))
	}
	long := strings.Repeat("é long line ", 20) + "https://hub.example/reset?token=" + strings.Repeat("x", 60)
	msgs := []Message{
		{To: "ada@example.com", Subject: "Grüße", Text: long, HTML: "<p>" + long + "</p>"},
		{To: "bo@example.com", Subject: "plain", Text: "just text"},
	}
	for _, msg := range msgs {
		if err := m.Send(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Send(context.Background(), Message{To: "x", Subject: "s", Text: "t"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Send of a bad address = %v, want ErrInvalid", err)
	}
	entries, _ := os.ReadDir(f.Dir())
	if len(entries) != 2 {
		t.Fatalf("the folder holds %d files, want 2 (one per mail, no temporary files)", len(entries))
	}
	got, err := ReadFolder(f.Dir())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range msgs {
		found := false
		for _, g := range got {
			if g == want {
				found = true
			}
		}
		if !found {
			t.Errorf("no mail read back equals %+v; read %+v", want, got)
		}
	}
}

func TestNewSettings(t *testing.T) {
	for _, bad := range []string{"http://host", "smtp://", "smtp://%zz", "mailto:a@b"} {
		if _, err := New(bad, t.TempDir(), "", nil); err == nil {
			t.Errorf("New(%q): got no error", bad)
		}
	}
	if _, err := New("", t.TempDir(), "not an address", nil); err == nil {
		t.Error("New with a bad sender: got no error")
	}
	s, err := New("smtps://u:p@mail.example.com", t.TempDir(), "Roost <r@example.com>", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sm := s.(*SMTP); sm.addr != "mail.example.com:465" || !sm.implicit || sm.user != "u" || sm.pass != "p" {
		t.Errorf("smtps settings = %+v", sm)
	}
	s, err = New("smtp://mail.example.com", t.TempDir(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sm := s.(*SMTP); sm.addr != "mail.example.com:587" || sm.implicit {
		t.Errorf("smtp settings = %+v", sm)
	}
}

// TestSMTPMailer runs real SMTP exchanges against a small server of the
// test's own on a loopback port: STARTTLS with AUTH PLAIN, implicit TLS,
// a wrong password, and a server that offers no STARTTLS.
func TestSMTPMailer(t *testing.T) {
	cert, pool := smtptest.Certificate(t)
	msg := Message{To: "ada@example.com", Subject: "Reset your password", Text: "link: https://hub.example/reset?token=abc\n", HTML: "<p>hi</p>"}

	t.Run("starttls", func(t *testing.T) {
		srv := smtptest.Start(t, smtptest.Config{Cert: cert, STARTTLS: true, User: "roost", Pass: "s3cret pass"})
		m, err := NewSMTP(SMTPConfig{URL: "smtp://roost:s3cret%20pass@127.0.0.1:" + srv.Port, From: "Roost <roost@example.com>", TLS: &tls.Config{RootCAs: pool}, Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Send(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
		got := srv.Only(t)
		if !got.TLS || !got.Authed || got.From != "roost@example.com" || strings.Join(got.Rcpt, ",") != "ada@example.com" {
			t.Errorf("session = tls %v, auth %v, from %q, rcpt %v; want TLS, authenticated, roost@example.com to ada@example.com", got.TLS, got.Authed, got.From, got.Rcpt)
		}
		parsed, err := Parse(got.Data)
		if err != nil {
			t.Fatal(err)
		}
		if parsed != msg {
			t.Errorf("the server received %+v, want %+v", parsed, msg)
		}
	})

	t.Run("implicit tls", func(t *testing.T) {
		srv := smtptest.Start(t, smtptest.Config{Cert: cert, Implicit: true, User: "roost", Pass: "pw"})
		m, err := NewSMTP(SMTPConfig{URL: "smtps://roost:pw@127.0.0.1:" + srv.Port, From: "roost@example.com", TLS: &tls.Config{RootCAs: pool}, Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Send(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
		if got := srv.Only(t); !got.TLS || !got.Authed {
			t.Errorf("session = tls %v, auth %v; want both", got.TLS, got.Authed)
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		srv := smtptest.Start(t, smtptest.Config{Cert: cert, STARTTLS: true, User: "roost", Pass: "right"})
		m, _ := NewSMTP(SMTPConfig{URL: "smtp://roost:wrong@127.0.0.1:" + srv.Port, From: "roost@example.com", TLS: &tls.Config{RootCAs: pool}, Timeout: 20 * time.Second})
		if err := m.Send(context.Background(), msg); err == nil || !strings.Contains(err.Error(), "535") {
			t.Errorf("Send with a wrong password = %v, want the server's 535", err)
		}
	})

	t.Run("untrusted certificate", func(t *testing.T) {
		srv := smtptest.Start(t, smtptest.Config{Cert: cert, STARTTLS: true})
		m, _ := NewSMTP(SMTPConfig{URL: "smtp://127.0.0.1:" + srv.Port, From: "roost@example.com", Timeout: 20 * time.Second})
		if err := m.Send(context.Background(), msg); err == nil {
			t.Error("Send to a server with an untrusted certificate: got no error")
		}
	})

	t.Run("no starttls offered", func(t *testing.T) {
		srv := smtptest.Start(t, smtptest.Config{})
		// A server on a non-loopback name that offers no STARTTLS is
		// refused before anything is sent; "localhost" resolves here,
		// so the refusal is checked through the host check itself.
		if isLoopback("mail.example.com") || !isLoopback("127.0.0.1") || !isLoopback("::1") || !isLoopback("localhost") {
			t.Error("isLoopback is wrong")
		}
		// On loopback, plain SMTP is allowed (a local relay).
		m, _ := NewSMTP(SMTPConfig{URL: "smtp://127.0.0.1:" + srv.Port, From: "roost@example.com", Timeout: 20 * time.Second})
		if err := m.Send(context.Background(), msg); err != nil {
			t.Fatalf("plain SMTP to a loopback relay: %v", err)
		}
		if got := srv.Only(t); got.TLS {
			t.Error("the session used TLS; the server offered none")
		}
	})
}
