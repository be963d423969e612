package tenants

import (
	"context"
	"database/sql"
	"strings"
	"time"
)

// AdminTenant is a tenant as the operator lists it: with its device count
// and this month's messages.
type AdminTenant struct {
	Tenant
	Devices           int64 `json:"devices"`
	MessagesThisMonth int64 `json:"messages_this_month"`
}

// AdminTenants lists tenants whose slug or name contains search (any case),
// by slug, with their device counts and messages in now's month.
func (s *Store) AdminTenants(ctx context.Context, search string, now time.Time, p Page) ([]AdminTenant, string, error) {
	like := containing(strings.ToLower(search))
	month := MonthStart(now)
	rows, err := s.db.QueryContext(ctx,
		`SELECT `+tenantColumns+`,
			(SELECT COUNT(*) FROM devices d WHERE d.tenant = t.slug),
			(SELECT COALESCE(SUM(u.messages_in + u.messages_out), 0) FROM usage u WHERE u.tenant = t.slug AND u.hour >= $2 AND u.hour < $3)
		 FROM tenants t
		 WHERE t.slug > $1 AND (LOWER(t.slug) LIKE $4 ESCAPE '\' OR LOWER(t.name) LIKE $4 ESCAPE '\')
		 ORDER BY t.slug LIMIT $5`,
		p.Cursor, month, month.AddDate(0, 1, 0), like, p.limit()+1)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var out []AdminTenant
	for rows.Next() {
		var a AdminTenant
		t, err := s.scanTenant(rows, &a.Devices, &a.MessagesThisMonth)
		if err != nil {
			return nil, "", err
		}
		a.Tenant = t
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	out, next := trimPage(out, p, func(a AdminTenant) string { return a.Slug })
	return out, next, nil
}

// Stats are the hub's totals, for the operator.
type Stats struct {
	Tenants           int64            `json:"tenants"`
	SuspendedTenants  int64            `json:"suspended_tenants"`
	Devices           int64            `json:"devices"`
	MessagesThisMonth int64            `json:"messages_this_month"`
	TenantsByPlan     map[string]int64 `json:"tenants_by_plan"`
	// Nodes are the data-plane nodes up, each with the tenants whose home
	// it is.
	Nodes []NodeStats `json:"nodes"`
}

// NodeStats is a data-plane node as the operator sees it.
type NodeStats struct {
	ID       string    `json:"id"`
	URL      string    `json:"url"`
	Draining bool      `json:"draining"`
	SeenAt   time.Time `json:"seen_at"`
	Tenants  int64     `json:"tenants"`
}

// Stats counts tenants (by plan), devices and now's month's messages.
func (s *Store) Stats(ctx context.Context, now time.Time) (Stats, error) {
	st := Stats{TenantsByPlan: map[string]int64{}}
	rows, err := s.db.QueryContext(ctx, `SELECT plan, suspended, COUNT(*) FROM tenants GROUP BY plan, suspended`)
	if err != nil {
		return Stats{}, err
	}
	defer rows.Close()
	for rows.Next() {
		var plan string
		var suspended bool
		var n int64
		if err := rows.Scan(&plan, &suspended, &n); err != nil {
			return Stats{}, err
		}
		st.Tenants += n
		st.TenantsByPlan[plan] += n
		if suspended {
			st.SuspendedTenants += n
		}
	}
	if err := rows.Err(); err != nil {
		return Stats{}, err
	}
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices`).Scan(&st.Devices); err != nil {
		return Stats{}, err
	}
	month := MonthStart(now)
	err = s.db.QueryRowContext(ctx, `SELECT COALESCE(SUM(messages_in + messages_out), 0) FROM usage WHERE hour >= $1 AND hour < $2`,
		month, month.AddDate(0, 1, 0)).Scan(&st.MessagesThisMonth)
	if err != nil {
		return Stats{}, err
	}
	st.Nodes, err = s.NodeStats(ctx, now)
	return st, err
}

// NodeStats lists the data-plane nodes up at now (seen in the last
// NodeLiveFor) with the tenants each holds.
func (s *Store) NodeStats(ctx context.Context, now time.Time) ([]NodeStats, error) {
	seenSince := now.Add(-NodeLiveFor)
	rows, err := s.db.QueryContext(ctx, `SELECT n.id, n.url, n.draining, n.seen_at, COUNT(p.tenant)
		FROM data_plane_nodes n LEFT JOIN tenant_placements p ON p.node = n.id
		WHERE n.seen_at >= $1 GROUP BY n.id, n.url, n.draining, n.seen_at ORDER BY n.id`, seenSince.UTC())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []NodeStats{}
	for rows.Next() {
		var n NodeStats
		if err := rows.Scan(&n.ID, &n.URL, &n.Draining, &n.SeenAt, &n.Tenants); err != nil {
			return nil, err
		}
		n.SeenAt = n.SeenAt.UTC()
		out = append(out, n)
	}
	return out, rows.Err()
}

// AuditImpersonation records that the operator took a tenant's owner role,
// and why.
func (s *Store) AuditImpersonation(ctx context.Context, tenant, reason string) error {
	if strings.TrimSpace(reason) == "" {
		return invalid("reason", "say why: it goes into the tenant's audit log")
	}
	if len(reason) > 500 {
		return invalid("reason", "must be at most 500 characters")
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "tenant.impersonate", "reason:"+reason)
	})
}
