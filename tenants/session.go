package tenants

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
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
	ID        string      `json:"id"`
	Kind      SessionKind `json:"-"`
	AccountID string      `json:"-"` // account sessions
	Tenant    string      `json:"-"` // impersonation sessions
	CreatedAt time.Time   `json:"created_at"`
	ExpiresAt time.Time   `json:"expires_at"`
	// Address and UserAgent are where the session was started from (the
	// client's address and browser), as the person's list of sessions
	// shows them.
	Address   string `json:"address"`
	UserAgent string `json:"user_agent"`
	// LastSeenAt is when the session was last used, to the minute.
	LastSeenAt *time.Time `json:"last_seen_at,omitempty"`
	// Account is the session's account, read with it (account sessions).
	Account Account `json:"-"`
}

// lastSeenEvery is how stale a session's last use may get before a
// request records it again: one write a minute per session at most.
const lastSeenEvery = time.Minute

type originKey struct{}

// origin is where a request comes from.
type origin struct{ address, userAgent string }

// WithOrigin returns a context that says where the request comes from:
// the client's address and user agent, which a session started for it
// records.
func WithOrigin(ctx context.Context, address, userAgent string) context.Context {
	if len(userAgent) > 256 {
		userAgent = userAgent[:256]
	}
	return context.WithValue(ctx, originKey{}, origin{address, strings.ToValidUTF8(userAgent, "?")})
}

// sessionPruneEvery is how often creating a session also deletes the
// sessions that expired more than a day ago.
const sessionPruneEvery = time.Hour

// MaxAccountSessions bounds one account's open sessions: a sign-in past it
// ends the account's oldest. A right password is never throttled, so
// without a bound a script that logs in for every call, or anyone holding
// the password, would add sessions without end, and the person's list
// (AccountSessions, which shows at most maxListedSessions) would no longer
// show them all.
const MaxAccountSessions = 100

// maxListedSessions bounds AccountSessions; above MaxAccountSessions, for
// the sign-ins that race past the bound at once.
const maxListedSessions = 500

// CreateSession records a new session of kind, for account (account
// sessions) or tenant (impersonation), ending at expires. An account past
// MaxAccountSessions open sessions has its oldest ended.
func (s *Store) CreateSession(ctx context.Context, kind SessionKind, account, tenant string, expires time.Time) (Session, error) {
	now := s.timestamp()
	o, _ := ctx.Value(originKey{}).(origin)
	se := Session{ID: newID("ses_"), Kind: kind, AccountID: account, Tenant: tenant, CreatedAt: now, ExpiresAt: expires.UTC().Truncate(time.Microsecond),
		Address: o.address, UserAgent: o.userAgent, LastSeenAt: &now}
	var acc sql.NullString
	if account != "" {
		acc = sql.NullString{String: account, Valid: true}
	}
	if _, err := s.db.ExecContext(ctx,
		`INSERT INTO sessions (id, kind, account_id, tenant, created_at, expires_at, address, user_agent, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		se.ID, se.Kind, acc, se.Tenant, se.CreatedAt, se.ExpiresAt, se.Address, se.UserAgent, now); err != nil {
		return Session{}, fmt.Errorf("record session: %w", err)
	}
	if kind == SessionAccount {
		if _, err := s.db.ExecContext(ctx,
			`UPDATE sessions SET ended_at = $3 WHERE account_id = $1 AND ended_at IS NULL AND expires_at > $3 AND id NOT IN (
			   SELECT id FROM sessions WHERE account_id = $1 AND ended_at IS NULL AND expires_at > $3
			   ORDER BY created_at DESC, id DESC LIMIT $2)`, account, MaxAccountSessions, now); err != nil {
			return Session{}, fmt.Errorf("end the oldest sessions: %w", err)
		}
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
	var created, ended, verified, seen sql.NullTime
	err := s.db.QueryRowContext(ctx,
		`SELECT s.id, s.kind, s.account_id, s.tenant, s.created_at, s.expires_at, s.ended_at, s.address, s.user_agent, s.last_seen_at,
		        a.id, a.email, a.created_at, a.email_verified_at
		 FROM sessions s LEFT JOIN accounts a ON a.id = s.account_id WHERE s.id = $1`, id).
		Scan(&se.ID, &se.Kind, &acc, &se.Tenant, &se.CreatedAt, &se.ExpiresAt, &ended, &se.Address, &se.UserAgent, &seen,
			&accID, &email, &created, &verified)
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
		se.Account.setVerified(verified)
	}
	se.LastSeenAt = nullTime(seen)
	if at := now.UTC().Truncate(time.Microsecond); se.LastSeenAt == nil || at.Sub(*se.LastSeenAt) >= lastSeenEvery {
		// A failed note of the last use does not fail the request.
		s.db.ExecContext(ctx, `UPDATE sessions SET last_seen_at = $2 WHERE id = $1`, se.ID, at)
		se.LastSeenAt = &at
	}
	return se, nil
}

// EndSession ends a session: its token stops working at once, wherever it
// is used. Ending one that has ended is no error.
func (s *Store) EndSession(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE sessions SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL`, id, s.timestamp())
	return err
}

// AccountSessions returns the account's open sessions at now, newest
// first: the sign-ins a person can see and end.
func (s *Store) AccountSessions(ctx context.Context, account string, now time.Time) ([]Session, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, created_at, expires_at, address, user_agent, last_seen_at FROM sessions
		 WHERE account_id = $1 AND kind = $2 AND ended_at IS NULL AND expires_at > $3
		 ORDER BY created_at DESC, id DESC LIMIT $4`, account, SessionAccount, now.UTC(), maxListedSessions)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	ses := []Session{}
	for rows.Next() {
		se := Session{Kind: SessionAccount, AccountID: account}
		var seen sql.NullTime
		if err := rows.Scan(&se.ID, &se.CreatedAt, &se.ExpiresAt, &se.Address, &se.UserAgent, &seen); err != nil {
			return nil, err
		}
		se.CreatedAt, se.ExpiresAt, se.LastSeenAt = se.CreatedAt.UTC(), se.ExpiresAt.UTC(), nullTime(seen)
		ses = append(ses, se)
	}
	return ses, rows.Err()
}

// EndAccountSession ends one of the account's own open sessions, audited.
// A session that is not the account's, or has ended, is ErrNotFound: one
// person cannot learn of, or end, another's.
func (s *Store) EndAccountSession(ctx context.Context, account, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx,
			`UPDATE sessions SET ended_at = $3 WHERE id = $1 AND account_id = $2 AND kind = $4 AND ended_at IS NULL AND expires_at > $3`,
			id, account, s.timestamp(), SessionAccount)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("session %s: %w", id, ErrNotFound)
		}
		return s.audit(ctx, tx, "", "account.session_end", "account:"+account)
	})
}

// EndOtherSessions ends every open session of the account but keep (""
// ends them all) and returns how many it ended, audited when any were.
func (s *Store) EndOtherSessions(ctx context.Context, account, keep string) (int, error) {
	var n int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		n, err = s.endSessions(ctx, tx, account, keep)
		if err != nil || n == 0 {
			return err
		}
		return s.audit(ctx, tx, "", "account.sessions_end", "account:"+account)
	})
	return int(n), err
}

func (s *Store) endSessions(ctx context.Context, tx *sql.Tx, account, keep string) (int64, error) {
	res, err := tx.ExecContext(ctx,
		`UPDATE sessions SET ended_at = $3 WHERE account_id = $1 AND id <> $2 AND ended_at IS NULL AND expires_at > $3`, account, keep, s.timestamp())
	if err != nil {
		return 0, fmt.Errorf("end sessions: %w", err)
	}
	return res.RowsAffected()
}
