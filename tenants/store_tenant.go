package tenants

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/roosthub/roost/migrations"
)

const tenantColumns = `t.slug, t.name, t.plan, t.suspended, t.quota_overrides, t.created_at, t.updated_at, t.queue_policy, t.spend_cap_cents, t.spend_cap_block, t.deny_action, t.outbox_policy`

type rowScanner interface{ Scan(dest ...any) error }

// scanTenant reads a row of tenantColumns (and extra) and resolves the
// tenant's plan in the store's catalogue.
func (s *Store) scanTenant(r rowScanner, extra ...any) (Tenant, error) {
	var t Tenant
	var overrides string
	var capCents sql.NullInt64
	var capBlock bool
	if err := r.Scan(append([]any{&t.Slug, &t.Name, &t.Plan, &t.Suspended, &overrides, &t.CreatedAt, &t.UpdatedAt, &t.QueuePolicy, &capCents, &capBlock, &t.DenyAction, &t.OutboxPolicy}, extra...)...); err != nil {
		return Tenant{}, err
	}
	if capCents.Valid {
		t.SpendCap = &SpendCap{Cents: capCents.Int64, Block: capBlock}
	}
	p := s.plans.Plan(t.Plan)
	t.plan = &p
	t.CreatedAt, t.UpdatedAt = t.CreatedAt.UTC(), t.UpdatedAt.UTC()
	if err := json.Unmarshal([]byte(overrides), &t.Overrides); err != nil {
		return Tenant{}, fmt.Errorf("tenant %s: quota overrides: %w", t.Slug, err)
	}
	if t.Overrides == nil {
		t.Overrides = map[string]int64{}
	}
	return t, nil
}

// CreateTenant creates a tenant on the free plan with owner as its owner and
// the default ACL rule, with no limit on how many owner makes (see
// CreateTenantWithin).
func (s *Store) CreateTenant(ctx context.Context, owner string, in TenantInput) (Tenant, error) {
	return s.CreateTenantWithin(ctx, owner, in, TenantLimits{})
}

// TenantLimits bounds the tenants one account makes. Zero is no limit.
type TenantLimits struct {
	// MaxFree is how many tenants on the free plan an account may own.
	MaxFree int
	// PerDay is how many tenants an account may create in 24 hours,
	// deleted ones included (a deleted tenant's slug stays reserved).
	PerDay int
}

// CreateTenantWithin is CreateTenant for an account held to lim: owning
// lim.MaxFree free tenants is a QuotaError (max_free_tenants), having
// created lim.PerDay in the last 24 hours an ErrThrottled saying when the
// next may be. The checks and the insert are one transaction under a lock
// on the account, so parallel requests cannot pass a limit together.
func (s *Store) CreateTenantWithin(ctx context.Context, owner string, in TenantInput, lim TenantLimits) (Tenant, error) {
	if err := in.Validate(); err != nil {
		return Tenant{}, err
	}
	now := s.timestamp()
	t := Tenant{Slug: in.Slug, Name: in.Name, Plan: PlanFree, QueuePolicy: DropOldest, DenyAction: DenyIgnore, OutboxPolicy: OutboxDropOldest, Overrides: map[string]int64{}, CreatedAt: now, UpdatedAt: now}
	actor := "account:" + owner
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if lim != (TenantLimits{}) {
			if err := s.checkTenantLimits(ctx, tx, owner, actor, now, lim); err != nil {
				return err
			}
		}
		var deleted int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM deleted_tenants WHERE slug = $1`, t.Slug).Scan(&deleted); err != nil {
			return err
		}
		if deleted > 0 {
			return fmt.Errorf("tenant %s is taken (by a deleted tenant whose records are kept): %w", t.Slug, ErrConflict)
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO tenants (slug, name, plan, suspended, quota_overrides, created_at, updated_at)
			 VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			t.Slug, t.Name, t.Plan, false, "{}", now, now); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("tenant %s is taken: %w", t.Slug, ErrConflict)
			}
			return err
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO members (tenant, account_id, role, created_at) VALUES ($1, $2, $3, $4)`,
			t.Slug, owner, RoleOwner, now); err != nil {
			return err
		}
		if _, err := s.insertACLRule(ctx, tx, t.Slug, DefaultACLRule(), 0); err != nil {
			return err
		}
		if lim != (TenantLimits{}) {
			// Counted by the account, whoever the context names.
			ctx = WithActor(ctx, actor)
		}
		return s.audit(ctx, tx, t.Slug, "tenant.create", "tenant:"+t.Slug)
	}, Change{Kind: TenantChanged, Tenant: t.Slug})
	if err != nil {
		return Tenant{}, err
	}
	t.Role = RoleOwner
	return t, nil
}

// checkTenantLimits holds owner to lim in tx, with the account's row
// locked until tx ends (SQLite's transactions hold the write lock anyway).
func (s *Store) checkTenantLimits(ctx context.Context, tx *sql.Tx, owner, actor string, now time.Time, lim TenantLimits) error {
	q := `SELECT id FROM accounts WHERE id = $1`
	if s.dialect == migrations.Postgres {
		q += ` FOR UPDATE`
	}
	var id string
	if err := tx.QueryRowContext(ctx, q, owner).Scan(&id); err != nil {
		return notFound(err, "account %s", owner)
	}
	if lim.PerDay > 0 {
		since := now.Add(-24 * time.Hour)
		var n int
		if err := tx.QueryRowContext(ctx,
			`SELECT COUNT(*) FROM audit_log WHERE actor = $1 AND action = $2 AND at > $3`,
			actor, "tenant.create", since).Scan(&n); err != nil {
			return err
		}
		if n >= lim.PerDay {
			// MIN(at) would lose its type on SQLite; the first row keeps it.
			var oldest time.Time
			if err := tx.QueryRowContext(ctx,
				`SELECT at FROM audit_log WHERE actor = $1 AND action = $2 AND at > $3 ORDER BY at LIMIT 1`,
				actor, "tenant.create", since).Scan(&oldest); err != nil {
				return err
			}
			wait := max(oldest.Add(24*time.Hour).Sub(now), time.Second)
			return Throttled(wait, fmt.Sprintf("an account creates at most %d tenants in 24 hours; the next may be created in %s", lim.PerDay, wait.Round(time.Minute)))
		}
	}
	if lim.MaxFree > 0 {
		var n int
		if err := tx.QueryRowContext(ctx,
			`SELECT COUNT(*) FROM members m JOIN tenants t ON t.slug = m.tenant WHERE m.account_id = $1 AND m.role = $2 AND t.plan = $3`,
			owner, RoleOwner, PlanFree).Scan(&n); err != nil {
			return err
		}
		if n >= lim.MaxFree {
			return &QuotaError{Quota: "max_free_tenants", Limit: int64(lim.MaxFree)}
		}
	}
	return nil
}

// Tenant returns the tenant with this slug.
func (s *Store) Tenant(ctx context.Context, slug string) (Tenant, error) {
	t, err := s.scanTenant(s.db.QueryRowContext(ctx, `SELECT `+tenantColumns+` FROM tenants t WHERE t.slug = $1`, slug))
	if err != nil {
		return Tenant{}, notFound(err, "tenant %s", slug)
	}
	return t, nil
}

// TenantsOf lists the tenants account is a member of, by slug, each with the
// account's role in it.
func (s *Store) TenantsOf(ctx context.Context, account string, p Page) ([]Tenant, string, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT `+tenantColumns+`, m.role FROM tenants t JOIN members m ON m.tenant = t.slug
		 WHERE m.account_id = $1 AND t.slug > $2 ORDER BY t.slug LIMIT $3`,
		account, p.Cursor, p.limit()+1)
	if err != nil {
		return nil, "", err
	}
	return s.collectTenants(rows, p, true)
}

// Tenants lists every tenant, by slug; for the operator.
func (s *Store) Tenants(ctx context.Context, p Page) ([]Tenant, string, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT `+tenantColumns+` FROM tenants t WHERE t.slug > $1 ORDER BY t.slug LIMIT $2`,
		p.Cursor, p.limit()+1)
	if err != nil {
		return nil, "", err
	}
	return s.collectTenants(rows, p, false)
}

func (s *Store) collectTenants(rows *sql.Rows, p Page, withRole bool) ([]Tenant, string, error) {
	defer rows.Close()
	var ts []Tenant
	for rows.Next() {
		var role Role
		var extra []any
		if withRole {
			extra = append(extra, &role)
		}
		t, err := s.scanTenant(rows, extra...)
		if err != nil {
			return nil, "", err
		}
		t.Role = role
		ts = append(ts, t)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	ts, next := trimPage(ts, p, func(t Tenant) string { return t.Slug })
	return ts, next, nil
}

// UpdateTenant applies an owner's update.
func (s *Store) UpdateTenant(ctx context.Context, slug string, u TenantUpdate) (Tenant, error) {
	if err := u.Validate(); err != nil {
		return Tenant{}, err
	}
	return s.modifyTenant(ctx, slug, "tenant.update", func(t *Tenant) {
		if u.Name != nil {
			t.Name = *u.Name
		}
		if u.QueuePolicy != nil {
			t.QueuePolicy = *u.QueuePolicy
		}
		if u.DenyAction != nil {
			t.DenyAction = *u.DenyAction
		}
		if u.OutboxPolicy != nil {
			t.OutboxPolicy = *u.OutboxPolicy
		}
	})
}

// AdminUpdateTenant applies the operator's update: plan, suspension and quota
// overrides.
func (s *Store) AdminUpdateTenant(ctx context.Context, slug string, u AdminTenantUpdate) (Tenant, error) {
	if err := u.Validate(s.plans); err != nil {
		return Tenant{}, err
	}
	// An operator who resumes a tenant waives its unpaid invoices' dunning:
	// the billing worker would otherwise suspend it again.
	var waive []func(*sql.Tx) error
	if u.Suspended != nil && !*u.Suspended {
		waive = append(waive, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `UPDATE billing_accounts SET suspended_by_billing = $2, payment_failed_at = NULL WHERE tenant = $1`, slug, false)
			return err
		})
	}
	return s.modifyTenant(ctx, slug, "tenant.admin_update", func(t *Tenant) {
		if u.Plan != nil {
			t.Plan = *u.Plan
		}
		if u.Suspended != nil {
			t.Suspended = *u.Suspended
		}
		for name, v := range u.Quotas {
			if v == nil {
				delete(t.Overrides, name)
			} else {
				t.Overrides[name] = *v
			}
		}
	}, waive...)
}

// modifyTenant reads the tenant under its row lock, applies change and writes
// it back, so concurrent updates of different fields do not undo each other.
// Each of also runs in the same transaction.
func (s *Store) modifyTenant(ctx context.Context, slug, action string, change func(*Tenant), also ...func(*sql.Tx) error) (Tenant, error) {
	var t Tenant
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, slug); err != nil {
			return err
		}
		var err error
		t, err = s.scanTenant(tx.QueryRowContext(ctx, `SELECT `+tenantColumns+` FROM tenants t WHERE t.slug = $1`, slug))
		if err != nil {
			return notFound(err, "tenant %s", slug)
		}
		change(&t)
		for _, f := range also {
			if err := f(tx); err != nil {
				return err
			}
		}
		return s.writeTenant(ctx, tx, &t, action)
	}, Change{Kind: TenantChanged, Tenant: slug})
	return t, err
}

// writeTenant writes back a tenant read under its row lock, and audits the
// change.
func (s *Store) writeTenant(ctx context.Context, tx *sql.Tx, t *Tenant, action string) error {
	t.UpdatedAt = s.timestamp()
	p := s.plans.Plan(t.Plan)
	t.plan = &p
	var capCents sql.NullInt64
	var capBlock bool
	if t.SpendCap != nil {
		capCents, capBlock = sql.NullInt64{Int64: t.SpendCap.Cents, Valid: true}, t.SpendCap.Block
	}
	if _, err := tx.ExecContext(ctx,
		`UPDATE tenants SET name = $2, plan = $3, suspended = $4, quota_overrides = $5, updated_at = $6, queue_policy = $7,
		 spend_cap_cents = $8, spend_cap_block = $9, deny_action = $10, outbox_policy = $11 WHERE slug = $1`,
		t.Slug, t.Name, t.Plan, t.Suspended, marshalJSON(t.Overrides), t.UpdatedAt, t.QueuePolicy, capCents, capBlock, t.DenyAction, t.OutboxPolicy); err != nil {
		return err
	}
	return s.audit(ctx, tx, t.Slug, action, "tenant:"+t.Slug)
}

// DeleteTenant deletes a tenant and everything it owns. The audit log and
// the usage records stay (see PruneUsage), and the slug stays reserved as
// long as they do.
func (s *Store) DeleteTenant(ctx context.Context, slug string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM tenants WHERE slug = $1`, slug)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("tenant %s: %w", slug, ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO deleted_tenants (slug, deleted_at) VALUES ($1, $2)
			ON CONFLICT (slug) DO UPDATE SET deleted_at = excluded.deleted_at`, slug, s.timestamp()); err != nil {
			return err
		}
		return s.audit(ctx, tx, slug, "tenant.delete", "tenant:"+slug)
	}, Change{Kind: TenantDeleted, Tenant: slug})
}

// PruneUsage deletes usage recorded before the cutoff, and frees the slugs
// of tenants deleted before it; it returns how many usage rows went.
func (s *Store) PruneUsage(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM usage WHERE hour < $1`, before.UTC())
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
		_, err = tx.ExecContext(ctx, `DELETE FROM deleted_tenants WHERE deleted_at < $1`, before.UTC())
		return err
	})
	return n, err
}

// Membership returns account's membership of tenant, or ErrNotFound when it
// has none (or the tenant does not exist: the two are not told apart).
func (s *Store) Membership(ctx context.Context, tenant, account string) (Member, error) {
	var m Member
	err := s.db.QueryRowContext(ctx,
		`SELECT m.account_id, a.email, m.role, m.created_at FROM members m JOIN accounts a ON a.id = m.account_id
		 WHERE m.tenant = $1 AND m.account_id = $2`, tenant, account).
		Scan(&m.AccountID, &m.Email, &m.Role, &m.CreatedAt)
	if err != nil {
		return Member{}, notFound(err, "tenant %s", tenant)
	}
	m.CreatedAt = m.CreatedAt.UTC()
	return m, nil
}

// Members lists a tenant's members by account id.
func (s *Store) Members(ctx context.Context, tenant string, p Page) ([]Member, string, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT m.account_id, a.email, m.role, m.created_at FROM members m JOIN accounts a ON a.id = m.account_id
		 WHERE m.tenant = $1 AND m.account_id > $2 ORDER BY m.account_id LIMIT $3`, tenant, p.Cursor, p.limit()+1)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var ms []Member
	for rows.Next() {
		var m Member
		if err := rows.Scan(&m.AccountID, &m.Email, &m.Role, &m.CreatedAt); err != nil {
			return nil, "", err
		}
		m.CreatedAt = m.CreatedAt.UTC()
		ms = append(ms, m)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	ms, next := trimPage(ms, p, func(m Member) string { return m.AccountID })
	return ms, next, nil
}

// ErrNoAccount is AddMember's answer for an email no account with a
// verified email has.
var ErrNoAccount = fmt.Errorf("no account has verified this email: %w", ErrNotFound)

// AddMember gives the account with in.Email a role in tenant, if by may
// (By.MayAdd), and leaves the account a notice saying who did. An email
// with no account, or whose account has not verified it, is ErrNoAccount;
// an existing member is a conflict.
func (s *Store) AddMember(ctx context.Context, tenant string, by By, in MemberInput) (Member, error) {
	if err := in.Validate(); err != nil {
		return Member{}, err
	}
	if err := by.MayAdd(in.Role); err != nil {
		return Member{}, err
	}
	m := Member{Email: in.Email, Role: in.Role, CreatedAt: s.timestamp()}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		// Only an account whose email is verified: anyone can sign up
		// with someone else's address, and would get the role meant for
		// the mailbox's owner. The others are invited (Invite).
		if err := tx.QueryRowContext(ctx, `SELECT id FROM accounts WHERE email = $1 AND email_verified_at IS NOT NULL`, in.Email).Scan(&m.AccountID); err != nil {
			if err == sql.ErrNoRows {
				return ErrNoAccount
			}
			return err
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO members (tenant, account_id, role, created_at) VALUES ($1, $2, $3, $4)`,
			tenant, m.AccountID, m.Role, m.CreatedAt); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("%s is already a member: %w", in.Email, ErrConflict)
			}
			return err
		}
		if err := s.leaveNotice(ctx, tx, m.AccountID, NoticeAdded, tenant, m.Role, by.Name); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "member.add", "account:"+m.AccountID)
	})
	return m, err
}

// RemoveMember removes account from tenant, if by may (By.MayRemove). The
// last owner cannot be removed. Unless keepKeys, the API keys made on the
// account's behalf in the tenant end with the membership. Someone removed
// by another is left a notice.
func (s *Store) RemoveMember(ctx context.Context, tenant, account string, by By, keepKeys bool) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var role Role
		if err := tx.QueryRowContext(ctx, `SELECT role FROM members WHERE tenant = $1 AND account_id = $2`, tenant, account).Scan(&role); err != nil {
			return notFound(err, "member %s", account)
		}
		if err := by.MayRemove(account, role, keepKeys); err != nil {
			return err
		}
		if role == RoleOwner {
			var owners int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM members WHERE tenant = $1 AND role = $2`, tenant, RoleOwner).Scan(&owners); err != nil {
				return err
			}
			if owners <= 1 {
				return fmt.Errorf("a tenant keeps at least one owner: %w", ErrConflict)
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM members WHERE tenant = $1 AND account_id = $2`, tenant, account); err != nil {
			return err
		}
		if !keepKeys {
			if _, err := s.deleteKeysOf(ctx, tx, tenant, account); err != nil {
				return err
			}
		}
		if by.Account != account {
			if err := s.leaveNotice(ctx, tx, account, NoticeRemoved, tenant, role, by.Name); err != nil {
				return err
			}
		}
		return s.audit(ctx, tx, tenant, "member.remove", "account:"+account)
	})
}

// Audit lists a tenant's audit log, newest first.
func (s *Store) Audit(ctx context.Context, tenant string, p Page) ([]AuditEntry, string, error) {
	cursor := p.Cursor
	if cursor == "" {
		cursor = "~" // sorts after every id
	}
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, tenant, actor, action, object, at FROM audit_log
		 WHERE tenant = $1 AND id < $2 ORDER BY id DESC LIMIT $3`, tenant, cursor, p.limit()+1)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var es []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var t sql.NullString
		if err := rows.Scan(&e.ID, &t, &e.Actor, &e.Action, &e.Object, &e.At); err != nil {
			return nil, "", err
		}
		e.Tenant, e.At = t.String, e.At.UTC()
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	es, next := trimPage(es, p, func(e AuditEntry) string { return e.ID })
	return es, next, nil
}
