package tenants

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// SessionKind tells what a session lets its bearer do.
type SessionKind string

// The kinds of session.
const (
	// SessionAccount is a person signed in, in the console or the API.
	SessionAccount SessionKind = "account"
	// SessionOperator is the operator signed in to the console's operator
	// pages.
	SessionOperator SessionKind = "operator"
	// SessionImpersonation is the operator acting as an owner of Tenant.
	SessionImpersonation SessionKind = "impersonation"
)

// Session is a sign-in the server can end. Its token carries the id; each
// request is served only while the session is neither ended nor expired.
type Session struct {
	ID        string
	Kind      SessionKind
	AccountID string // account sessions
	Tenant    string // impersonation sessions
	CreatedAt time.Time
	ExpiresAt time.Time
	// Account is the session's account, read with it (account sessions).
	Account Account
}

// sessionPruneEvery is how often creating a session also deletes the
// sessions that expired more than a day ago.
const sessionPruneEvery = time.Hour

// CreateSession records a new session of kind, for account (account
// sessions) or tenant (impersonation), ending at expires.
func (s *Store) CreateSession(ctx context.Context, kind SessionKind, account, tenant string, expires time.Time) (Session, error) {
	now := s.timestamp()
	se := Session{ID: newID("ses_"), Kind: kind, AccountID: account, Tenant: tenant, CreatedAt: now, ExpiresAt: expires.UTC().Truncate(time.Microsecond)}
	var acc sql.NullString
	if account != "" {
		acc = sql.NullString{String: account, Valid: true}
	}
	if _, err := s.db.ExecContext(ctx,
		`INSERT INTO sessions (id, kind, account_id, tenant, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)`,
		se.ID, se.Kind, acc, se.Tenant, se.CreatedAt, se.ExpiresAt); err != nil {
		return Session{}, fmt.Errorf("record session: %w", err)
	}
	if last := s.sessionsPruned.Load(); now.Unix()-last >= int64(sessionPruneEvery/time.Second) && s.sessionsPruned.CompareAndSwap(last, now.Unix()) {
		if _, err := s.db.ExecContext(ctx, `DELETE FROM sessions WHERE expires_at < $1`, now.Add(-24*time.Hour)); err != nil {
			return Session{}, fmt.Errorf("prune sessions: %w", err)
		}
	}
	return se, nil
}

// Session returns the session with this id if it is still open at now
// (not ended, not expired), with its account for an account session; any
// other id is ErrUnauthorized.
func (s *Store) Session(ctx context.Context, id string, now time.Time) (Session, error) {
	var se Session
	var acc, accID, email sql.NullString
	var created sql.NullTime
	var ended sql.NullTime
	err := s.db.QueryRowContext(ctx,
		`SELECT s.id, s.kind, s.account_id, s.tenant, s.created_at, s.expires_at, s.ended_at, a.id, a.email, a.created_at
		 FROM sessions s LEFT JOIN accounts a ON a.id = s.account_id WHERE s.id = $1`, id).
		Scan(&se.ID, &se.Kind, &acc, &se.Tenant, &se.CreatedAt, &se.ExpiresAt, &ended, &accID, &email, &created)
	if err == sql.ErrNoRows {
		return Session{}, fmt.Errorf("no such session: %w", ErrUnauthorized)
	}
	if err != nil {
		return Session{}, err
	}
	if ended.Valid || !now.Before(se.ExpiresAt) {
		return Session{}, fmt.Errorf("the session has ended: %w", ErrUnauthorized)
	}
	se.AccountID, se.CreatedAt, se.ExpiresAt = acc.String, se.CreatedAt.UTC(), se.ExpiresAt.UTC()
	if se.Kind == SessionAccount {
		if !accID.Valid {
			return Session{}, fmt.Errorf("the session's account no longer exists: %w", ErrUnauthorized)
		}
		se.Account = Account{ID: accID.String, Email: email.String, CreatedAt: created.Time.UTC()}
	}
	return se, nil
}

// EndSession ends a session: its token stops working at once, wherever it
// is used. Ending one that has ended is no error.
func (s *Store) EndSession(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE sessions SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL`, id, s.timestamp())
	return err
}
