package tenants

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// AuditFilter narrows a tenant's audit trail: entries whose action starts
// with Action (device. for every device change), whose actor is Actor, at
// or after Since and before Until. Zero fields do not filter.
type AuditFilter struct {
	Action string
	Actor  string
	Since  time.Time
	Until  time.Time
}

// AuditWhere lists a tenant's audit log, newest first, a page at a time,
// narrowed by f.
func (s *Store) AuditWhere(ctx context.Context, tenant string, f AuditFilter, p Page) ([]AuditEntry, string, error) {
	var where []string
	args := []any{tenant}
	arg := func(clause string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(clause, len(args)))
	}
	if p.Cursor != "" {
		arg("id < $%d", p.Cursor)
	}
	if f.Action != "" {
		arg(`action LIKE $%d ESCAPE '\'`, strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`).Replace(f.Action)+"%")
	}
	if f.Actor != "" {
		arg("actor = $%d", f.Actor)
	}
	if !f.Since.IsZero() {
		arg("at >= $%d", f.Since.UTC())
	}
	if !f.Until.IsZero() {
		arg("at < $%d", f.Until.UTC())
	}
	q := `SELECT id, actor, action, object, at FROM audit_log WHERE tenant = $1`
	for _, w := range where {
		q += " AND " + w
	}
	q += fmt.Sprintf(" ORDER BY id DESC LIMIT %d", p.limit()+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	es := []AuditEntry{}
	for rows.Next() {
		e := AuditEntry{Tenant: tenant}
		if err := rows.Scan(&e.ID, &e.Actor, &e.Action, &e.Object, &e.At); err != nil {
			return nil, "", err
		}
		e.At = e.At.UTC()
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	es, next := trimPage(es, p, func(e AuditEntry) string { return e.ID })
	return es, next, nil
}
