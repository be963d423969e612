package tenants

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// MaxACLRules caps a tenant's rule list: every publish and subscribe walks it.
const MaxACLRules = 1000

// ACLRules returns a tenant's rules in position order.
func (s *Store) ACLRules(ctx context.Context, tenant string) ([]ACLRule, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, position, effect, action, topic, device, device_group, created_at FROM acl_rules
		 WHERE tenant = $1 ORDER BY position`, tenant)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var rs []ACLRule
	for rows.Next() {
		var r ACLRule
		if err := rows.Scan(&r.ID, &r.Position, &r.Effect, &r.Action, &r.Topic, &r.Device, &r.Group, &r.CreatedAt); err != nil {
			return nil, err
		}
		r.CreatedAt = r.CreatedAt.UTC()
		rs = append(rs, r)
	}
	return rs, rows.Err()
}

// CreateACLRule inserts a rule at in.Position (appending when nil or past the
// end), moving the rules at and after it down by one.
func (s *Store) CreateACLRule(ctx context.Context, tenant string, in ACLRuleInput) (ACLRule, error) {
	if err := in.Validate(); err != nil {
		return ACLRule{}, err
	}
	var r ACLRule
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM acl_rules WHERE tenant = $1`, tenant).Scan(&n); err != nil {
			return err
		}
		if n >= MaxACLRules {
			return &QuotaError{Quota: "acl_rules", Limit: MaxACLRules}
		}
		pos := n
		if in.Position != nil && *in.Position < n {
			pos = *in.Position
		}
		var err error
		r, err = s.insertACLRule(ctx, tx, tenant, in, pos)
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "acl_rule.create", "acl_rule:"+r.ID)
	}, Change{Kind: ACLChanged, Tenant: tenant})
	return r, err
}

func (s *Store) insertACLRule(ctx context.Context, tx *sql.Tx, tenant string, in ACLRuleInput, pos int) (ACLRule, error) {
	r := ACLRule{ID: newID("acl_"), Position: pos, Effect: in.Effect, Action: in.Action, Topic: in.Topic, Device: in.Device, Group: in.Group, CreatedAt: s.timestamp()}
	if _, err := tx.ExecContext(ctx,
		`UPDATE acl_rules SET position = position + 1 WHERE tenant = $1 AND position >= $2`, tenant, pos); err != nil {
		return ACLRule{}, err
	}
	_, err := tx.ExecContext(ctx,
		`INSERT INTO acl_rules (tenant, id, position, effect, action, topic, device, device_group, created_at)
		 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		tenant, r.ID, r.Position, r.Effect, r.Action, r.Topic, r.Device, r.Group, r.CreatedAt)
	return r, err
}

// DeleteACLRule removes a rule and closes the gap it leaves.
func (s *Store) DeleteACLRule(ctx context.Context, tenant, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var pos int
		if err := tx.QueryRowContext(ctx, `SELECT position FROM acl_rules WHERE tenant = $1 AND id = $2`, tenant, id).Scan(&pos); err != nil {
			return notFound(err, "acl rule %s", id)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM acl_rules WHERE tenant = $1 AND id = $2`, tenant, id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx,
			`UPDATE acl_rules SET position = position - 1 WHERE tenant = $1 AND position > $2`, tenant, pos); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "acl_rule.delete", "acl_rule:"+id)
	}, Change{Kind: ACLChanged, Tenant: tenant})
}

// MoveACLRule moves a rule to position to (the last position when to is past
// the end), shifting the rules between.
func (s *Store) MoveACLRule(ctx context.Context, tenant, id string, to int) (ACLRule, error) {
	if to < 0 {
		return ACLRule{}, invalid("position", "must not be negative")
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var pos, n int
		if err := tx.QueryRowContext(ctx, `SELECT position FROM acl_rules WHERE tenant = $1 AND id = $2`, tenant, id).Scan(&pos); err != nil {
			return notFound(err, "acl rule %s", id)
		}
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM acl_rules WHERE tenant = $1`, tenant).Scan(&n); err != nil {
			return err
		}
		to = min(to, n-1)
		var shift string
		switch {
		case to < pos:
			shift = `UPDATE acl_rules SET position = position + 1 WHERE tenant = $1 AND position >= $2 AND position < $3`
		case to > pos:
			shift = `UPDATE acl_rules SET position = position - 1 WHERE tenant = $1 AND position <= $2 AND position > $3`
		default:
			return nil
		}
		if _, err := tx.ExecContext(ctx, shift, tenant, to, pos); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE acl_rules SET position = $3 WHERE tenant = $1 AND id = $2`, tenant, id, to); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "acl_rule.move", "acl_rule:"+id)
	}, Change{Kind: ACLChanged, Tenant: tenant})
	if err != nil {
		return ACLRule{}, err
	}
	rules, err := s.ACLRules(ctx, tenant)
	for _, r := range rules {
		if r.ID == id {
			return r, err
		}
	}
	return ACLRule{}, fmt.Errorf("acl rule %s: %w", id, ErrNotFound)
}

// CheckACL answers whether device may do the checked action in tenant, with
// the deciding rule (nil when none matched and the default deny applied).
// The device's groups and metadata are its registered ones; a device not
// registered has none.
func (s *Store) CheckACL(ctx context.Context, tenant string, c ACLCheck) (bool, *ACLRule, error) {
	if err := c.Validate(); err != nil {
		return false, nil, err
	}
	rules, err := s.ACLRules(ctx, tenant)
	if err != nil {
		return false, nil, fmt.Errorf("read rules: %w", err)
	}
	sub := ACLSubject{Device: c.Device}
	if NeedsSubject(rules) {
		d, err := s.Device(ctx, tenant, c.Device)
		switch {
		case err == nil:
			sub = d.Subject()
		case !errors.Is(err, ErrNotFound):
			return false, nil, err
		}
	}
	allowed, rule := CheckACL(rules, sub, c.Action, c.Topic)
	return allowed, rule, nil
}
