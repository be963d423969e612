package tenants

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// ExportRules returns a tenant's rules that export to Kafka, oldest
// first: what the data plane's Kafka export acts on.
func (s *Store) ExportRules(ctx context.Context, tenant string) ([]ExportRule, error) {
	return s.rules(ctx, tenant, ` AND destination = ''`)
}

// Rules returns all of a tenant's rules, Kafka export and destination
// rules, oldest first.
func (s *Store) Rules(ctx context.Context, tenant string) ([]ExportRule, error) {
	return s.rules(ctx, tenant, "")
}

// Rule returns one of a tenant's rules.
func (s *Store) Rule(ctx context.Context, tenant, id string) (ExportRule, error) {
	rs, err := s.rules(ctx, tenant, ` AND id = $2`, id)
	if err != nil {
		return ExportRule{}, err
	}
	if len(rs) == 0 {
		return ExportRule{}, fmt.Errorf("rule %s: %w", id, ErrNotFound)
	}
	return rs[0], nil
}

func (s *Store) rules(ctx context.Context, tenant, where string, args ...any) ([]ExportRule, error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, filter, topic, condition, projection, destination, created_at FROM export_rules WHERE tenant = $1`+where+` ORDER BY created_at, id`,
		append([]any{tenant}, args...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ExportRule
	for rows.Next() {
		var r ExportRule
		if err := rows.Scan(&r.ID, &r.Filter, &r.Topic, &r.Condition, &r.Projection, &r.Destination, &r.CreatedAt); err != nil {
			return nil, err
		}
		r.CreatedAt = r.CreatedAt.UTC()
		if r.Topic != "" {
			r.KafkaTopic = ExportTopic(tenant, r.Topic)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// CreateExportRule adds an export rule.
func (s *Store) CreateExportRule(ctx context.Context, tenant string, in ExportRuleInput) (ExportRule, error) {
	if err := in.Validate(); err != nil {
		return ExportRule{}, err
	}
	r := ExportRule{ID: newID("exp_"), Filter: in.Filter, Topic: in.Topic, Condition: in.Condition, Projection: in.Projection, CreatedAt: s.timestamp()}
	if r.Topic != "" {
		r.KafkaTopic = ExportTopic(tenant, in.Topic)
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		if in.Destination != "" && !in.ToOperatorKafka() {
			d, err := s.destinationRef(ctx, tx, tenant, in.Destination)
			if errors.Is(err, ErrNotFound) {
				return invalid("destination", "no destination %q in this tenant (give its id or name)", in.Destination)
			}
			if err != nil {
				return err
			}
			r.Destination = d.ID
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM export_rules WHERE tenant = $1`, tenant).Scan(&n); err != nil {
			return err
		}
		if n >= MaxExportRules {
			return &QuotaError{Quota: "export_rules", Limit: MaxExportRules}
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO export_rules (tenant, id, filter, topic, condition, projection, destination, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			tenant, r.ID, r.Filter, r.Topic, r.Condition, r.Projection, r.Destination, r.CreatedAt); err != nil {
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

// DestinationRuleTenants lists the tenants with at least one rule with a
// destination: the data plane resumes their outboxes after a restart.
func (s *Store) DestinationRuleTenants(ctx context.Context) ([]string, error) {
	return s.strings(ctx, `SELECT DISTINCT tenant FROM export_rules WHERE destination <> '' ORDER BY tenant`)
}
