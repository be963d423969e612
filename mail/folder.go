package mail

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// Folder is the mailer of development and tests: each message is one file
// (<time>-<random>.eml, a complete RFC 5322 message) in a directory, and its
// path is logged, so a person running the hub on a laptop can open the
// link in it.
type Folder struct {
	dir  string
	from string
	log  *slog.Logger
	now  func() time.Time
}

var _ Mailer = (*Folder)(nil)

// NewFolder returns a mailer writing into dir, which it creates (0700: the
// mails hold sign-in links).
func NewFolder(dir, from string, log *slog.Logger) (*Folder, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create mail folder: %w", err)
	}
	return &Folder{dir: dir, from: from, log: log, now: time.Now}, nil
}

// Dir is the folder the mails are written to.
func (f *Folder) Dir() string { return f.dir }

// Send writes the message to a new file. The file appears complete or not
// at all (written under a temporary name, then renamed), so whoever reads
// the folder never sees half a mail.
func (f *Folder) Send(ctx context.Context, m Message) error {
	if err := m.Validate(); err != nil {
		return err
	}
	now := f.now()
	raw, err := compose(f.from, m, now)
	if err != nil {
		return err
	}
	r := make([]byte, 6)
	rand.Read(r)
	name := now.UTC().Format("20060102T150405.000000000Z") + "-" + hex.EncodeToString(r) + ".eml"
	tmp, err := os.CreateTemp(f.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("write mail: %w", err)
	}
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write mail: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write mail: %w", err)
	}
	path := filepath.Join(f.dir, name)
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write mail: %w", err)
	}
	f.log.Info("mail written to a file (no ROOST_SMTP_URL)", "path", path, "to", m.To, "subject", m.Subject)
	return nil
}
