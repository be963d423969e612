package tenants

import (
	"context"
	"database/sql"
	"fmt"
)

// ExportRules returns a tenant's export rules, oldest first.
func (s *Store) ExportRules(ctx context.Context, tenant string) ([]ExportRule, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, filter, topic, created_at FROM export_rules WHERE tenant = $1 ORDER BY id`, tenant)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ExportRule
	for rows.Next() {
		var r ExportRule
		if err := rows.Scan(&r.ID, &r.Filter, &r.Topic, &r.CreatedAt); err != nil {
			return nil, err
		}
		r.CreatedAt, r.KafkaTopic = r.CreatedAt.UTC(), ExportTopic(tenant, r.Topic)
		out = append(out, r)
	}
	return out, rows.Err()
}

// CreateExportRule adds an export rule.
func (s *Store) CreateExportRule(ctx context.Context, tenant string, in ExportRuleInput) (ExportRule, error) {
	if err := in.Validate(); err != nil {
		return ExportRule{}, err
	}
	r := ExportRule{ID: newID("exp_"), Filter: in.Filter, Topic: in.Topic, KafkaTopic: ExportTopic(tenant, in.Topic), CreatedAt: s.timestamp()}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM export_rules WHERE tenant = $1`, tenant).Scan(&n); err != nil {
			return err
		}
		if n >= MaxExportRules {
			return &QuotaError{Quota: "export_rules", Limit: MaxExportRules}
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO export_rules (tenant, id, filter, topic, created_at) VALUES ($1, $2, $3, $4, $5)`,
			tenant, r.ID, r.Filter, r.Topic, r.CreatedAt); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "export_rule.create", "export_rule:"+r.ID)
	}, Change{Kind: ExportChanged, Tenant: tenant})
	return r, err
}

// DeleteExportRule removes an export rule.
func (s *Store) DeleteExportRule(ctx context.Context, tenant, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM export_rules WHERE tenant = $1 AND id = $2`, tenant, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("export rule %s: %w", id, ErrNotFound)
		}
		return s.audit(ctx, tx, tenant, "export_rule.delete", "export_rule:"+id)
	}, Change{Kind: ExportChanged, Tenant: tenant})
}
