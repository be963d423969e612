// Package mail owns the mail the hub sends people (verify an email, reset a
// password, an invitation): the Mailer that sends a Message, its two kinds
// (a folder of files for development and tests, and SMTP), and the
// templates messages are written from.
package mail

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	netmail "net/mail"
	"path/filepath"
	"strings"
)

// Mailer sends one message. Send returns once the message is handed over
// (written to its file, or accepted by the SMTP server).
type Mailer interface {
	Send(ctx context.Context, m Message) error
}

// Message is one mail to one person: a subject, a plain-text body and,
// optionally, an HTML body of the same content.
type Message struct {
	To, Subject, Text, HTML string
}

// ErrInvalid is a message that cannot be sent as it is.
var ErrInvalid = errors.New("invalid message")

// Validate checks that the message has one plain address and a subject and
// text that cannot add headers of their own.
func (m Message) Validate() error {
	a, err := netmail.ParseAddress(m.To)
	if err != nil || a.Address != m.To {
		return fmt.Errorf("to %q is not one plain address: %w", m.To, ErrInvalid)
	}
	if strings.ContainsAny(m.Subject, "\r\n") || strings.ContainsAny(m.To, "\r\n") {
		return fmt.Errorf("a subject holds no line break: %w", ErrInvalid)
	}
	if m.Subject == "" || m.Text == "" {
		return fmt.Errorf("a message needs a subject and a text: %w", ErrInvalid)
	}
	return nil
}

// New returns the mailer the settings ask for: SMTP to smtpURL when it is
// set, otherwise a folder of files in <dataDir>/mail. from is the sender's
// address ("Roost <roost@example.com>"); empty: roost@localhost.
func New(smtpURL, dataDir, from string, log *slog.Logger) (Mailer, error) {
	if from == "" {
		from = "Roost <roost@localhost>"
	}
	if _, err := netmail.ParseAddress(from); err != nil {
		return nil, fmt.Errorf("sender %q is not an address: %w", from, err)
	}
	if smtpURL != "" {
		return NewSMTP(SMTPConfig{URL: smtpURL, From: from, Log: log})
	}
	return NewFolder(filepath.Join(dataDir, "mail"), from, log)
}

func parseFrom(from string) (string, error) {
	a, err := netmail.ParseAddress(from)
	if err != nil {
		return "", fmt.Errorf("sender %q is not an address: %w", from, err)
	}
	return a.Address, nil
}
