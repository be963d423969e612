package tenants

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Invite asks the person with an email to join a tenant with a role. Its
// link carries a random token, stored only as a hash; it is pending until
// accepted, revoked or expired (InviteTTL).
type Invite struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant"`
	Email     string    `json:"email"`
	Role      Role      `json:"role"`
	InvitedBy string    `json:"invited_by"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// InviteTTL is how long an invite's link works.
const InviteTTL = 7 * 24 * time.Hour

// MaxPendingInvites bounds a tenant's pending invites.
const MaxPendingInvites = 200

// HashInviteToken is the stored form of an invite's token.
func HashInviteToken(token string) string { return hashSecret(token) }

const inviteColumns = `id, tenant, email, role, invited_by, created_at, expires_at`

func scanInvite(sc interface{ Scan(...any) error }) (Invite, error) {
	var in Invite
	err := sc.Scan(&in.ID, &in.Tenant, &in.Email, &in.Role, &in.InvitedBy, &in.CreatedAt, &in.ExpiresAt)
	in.CreatedAt, in.ExpiresAt = in.CreatedAt.UTC(), in.ExpiresAt.UTC()
	return in, err
}

// CreateInvite invites in.Email to tenant with in.Role, if by may give that
// role (By.MayAdd), replacing the email's pending invite if it has one and
// by may give its role too (replacing revokes it: an admin may not end an
// owner's invite this way, as RevokeInvite refuses). The link's token is
// given hashed (HashInviteToken). Someone who is a member already is
// ErrConflict. It is audited.
func (s *Store) CreateInvite(ctx context.Context, tenant string, by By, in MemberInput, tokenHash string) (Invite, error) {
	if err := in.Validate(); err != nil {
		return Invite{}, err
	}
	if err := by.MayAdd(in.Role); err != nil {
		return Invite{}, err
	}
	now := s.timestamp()
	inv := Invite{ID: newID("inv_"), Tenant: tenant, Email: in.Email, Role: in.Role, InvitedBy: by.Name, CreatedAt: now, ExpiresAt: now.Add(InviteTTL)}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx,
			`SELECT COUNT(*) FROM members m JOIN accounts a ON a.id = m.account_id WHERE m.tenant = $1 AND a.email = $2`, tenant, in.Email).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%s is already a member: %w", in.Email, ErrConflict)
		}
		// Read under the tenant's lock, so that no invite of a higher role
		// slips in between this check and the revoke below.
		var pending []Role
		rows, err := tx.QueryContext(ctx,
			`SELECT role FROM invites WHERE tenant = $1 AND email = $2 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $3`,
			tenant, in.Email, now)
		if err != nil {
			return err
		}
		for rows.Next() {
			var r Role
			if err := rows.Scan(&r); err != nil {
				rows.Close()
				return err
			}
			pending = append(pending, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range pending {
			if err := by.MayAdd(r); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx,
			`UPDATE invites SET revoked_at = $3 WHERE tenant = $1 AND email = $2 AND accepted_at IS NULL AND revoked_at IS NULL`,
			tenant, in.Email, now); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx,
			`SELECT COUNT(*) FROM invites WHERE tenant = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2`, tenant, now).Scan(&n); err != nil {
			return err
		}
		if n >= MaxPendingInvites {
			return fmt.Errorf("the tenant has %d pending invites; revoke some first: %w", n, ErrConflict)
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO invites (id, tenant, email, role, token_hash, invited_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			inv.ID, inv.Tenant, inv.Email, inv.Role, tokenHash, inv.InvitedBy, inv.CreatedAt, inv.ExpiresAt); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "invite.create", "invite:"+inv.ID)
	})
	if err != nil {
		return Invite{}, err
	}
	return inv, nil
}

// Invites returns the tenant's pending invites, newest first.
func (s *Store) Invites(ctx context.Context, tenant string) ([]Invite, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT `+inviteColumns+` FROM invites WHERE tenant = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2
		 ORDER BY created_at DESC, id DESC LIMIT $3`, tenant, s.timestamp(), MaxPendingInvites)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Invite{}
	for rows.Next() {
		in, err := scanInvite(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, rows.Err()
}

// RevokeInvite ends a pending invite of the tenant: its link stops
// working. Only an owner revokes an invite to be an owner. An id that is
// not a pending invite of this tenant is ErrNotFound. It is audited.
func (s *Store) RevokeInvite(ctx context.Context, tenant, id string, by By) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		var role Role
		if err := tx.QueryRowContext(ctx,
			`SELECT role FROM invites WHERE tenant = $1 AND id = $2 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $3`,
			tenant, id, s.timestamp()).Scan(&role); err != nil {
			return notFound(err, "invite %s", id)
		}
		if err := by.MayAdd(role); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE invites SET revoked_at = $3 WHERE tenant = $1 AND id = $2`, tenant, id, s.timestamp()); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "invite.revoke", "invite:"+id)
	})
}

// InviteByToken returns the pending invite whose token hashes to
// tokenHash; any other is ErrNotFound (used, revoked, expired or unknown
// alike).
func (s *Store) InviteByToken(ctx context.Context, tokenHash string) (Invite, error) {
	in, err := scanInvite(s.db.QueryRowContext(ctx,
		`SELECT `+inviteColumns+` FROM invites WHERE token_hash = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2`,
		tokenHash, s.timestamp()))
	if err != nil {
		return Invite{}, notFound(err, "invite")
	}
	return in, nil
}

// AcceptInvite makes account a member of the invite's tenant with its
// role, if the invite is pending and for the account's email (ErrForbidden
// otherwise); the invite is used up. It is audited, as the member's
// addition.
func (s *Store) AcceptInvite(ctx context.Context, tokenHash string, account Account) (Invite, error) {
	var in Invite
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		in, err = scanInvite(tx.QueryRowContext(ctx,
			`SELECT `+inviteColumns+` FROM invites WHERE token_hash = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2`,
			tokenHash, s.timestamp()))
		if err != nil {
			return notFound(err, "invite")
		}
		if in.Email != account.Email {
			return fmt.Errorf("this invite is for another email; sign in with the account of %s: %w", in.Email, ErrForbidden)
		}
		if err := s.lockTenant(ctx, tx, in.Tenant); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx,
			`UPDATE invites SET accepted_at = $2, accepted_by = $3 WHERE id = $1 AND accepted_at IS NULL AND revoked_at IS NULL`,
			in.ID, s.timestamp(), account.ID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("invite: %w", ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO members (tenant, account_id, role, created_at) VALUES ($1, $2, $3, $4)`,
			in.Tenant, account.ID, in.Role, s.timestamp()); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("you are already a member of %s: %w", in.Tenant, ErrConflict)
			}
			return err
		}
		ctx := WithActor(ctx, "account:"+account.ID)
		if err := s.audit(ctx, tx, in.Tenant, "invite.accept", "invite:"+in.ID); err != nil {
			return err
		}
		return s.audit(ctx, tx, in.Tenant, "member.add", "account:"+account.ID)
	})
	if err != nil {
		return Invite{}, err
	}
	return in, nil
}
