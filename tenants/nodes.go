package tenants

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// NodeLiveFor is how long a data-plane node counts as up after it last
// announced itself (it does every 3 s); a node silent longer is taken for
// dead and its tenants can be claimed by others.
const NodeLiveFor = 10 * time.Second

// Node is a data-plane node as it announced itself.
type Node struct {
	ID  string
	URL string // its internal API
	// ForwardAddr is where it takes the device connections other nodes
	// forward to it ("" for a node that takes none).
	ForwardAddr string
	// Draining is set from the moment a node starts draining until it
	// retires: it keeps its tenants meanwhile but takes no new ones.
	Draining bool
	SeenAt   time.Time
}

// AnnounceNode records that a data-plane node is up. Announcing does not
// undo draining.
func (s *Store) AnnounceNode(ctx context.Context, n Node) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO data_plane_nodes (id, url, forward_addr, draining, seen_at) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (id) DO UPDATE SET url = excluded.url, forward_addr = excluded.forward_addr,
			draining = data_plane_nodes.draining OR excluded.draining, seen_at = excluded.seen_at`,
		n.ID, n.URL, n.ForwardAddr, n.Draining, s.timestamp())
	return err
}

// DrainNode marks a node as draining.
func (s *Store) DrainNode(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE data_plane_nodes SET draining = TRUE WHERE id = $1`, id)
	return err
}

// RetireNode removes a node that is going away, with the tenants it held.
func (s *Store) RetireNode(ctx context.Context, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM tenant_placements WHERE node = $1`, id); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM data_plane_nodes WHERE id = $1`, id)
		return err
	})
}

// Nodes lists the nodes seen since the cutoff, by id; older rows are
// deleted on the way (a node that died without retiring).
func (s *Store) Nodes(ctx context.Context, seenSince time.Time) ([]Node, error) {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM data_plane_nodes WHERE seen_at < $1`, seenSince.UTC().Add(-time.Hour)); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT id, url, forward_addr, draining, seen_at FROM data_plane_nodes
		WHERE seen_at >= $1 ORDER BY id`, seenSince.UTC())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		var n Node
		if err := rows.Scan(&n.ID, &n.URL, &n.ForwardAddr, &n.Draining, &n.SeenAt); err != nil {
			return nil, err
		}
		n.SeenAt = n.SeenAt.UTC()
		out = append(out, n)
	}
	return out, rows.Err()
}

// TenantHome is the node holding a tenant, "" if none does.
func (s *Store) TenantHome(ctx context.Context, tenant string) (string, error) {
	var node string
	err := s.db.QueryRowContext(ctx, `SELECT node FROM tenant_placements WHERE tenant = $1`, tenant).Scan(&node)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return node, err
}

// TenantHomeNode is the node holding a tenant, as that node last announced
// itself; ok is false if none holds it. A holder whose row is gone (it was
// silent for over an hour) comes back with only its ID.
func (s *Store) TenantHomeNode(ctx context.Context, tenant string) (n Node, ok bool, err error) {
	p, ok, err := s.TenantPlacement(ctx, tenant)
	return p.Home, ok, err
}

// SpreadLiveFor is how long a tenant stays wide (served by several nodes)
// after a node serving it last said so (they do every few seconds), once
// no node holds it since then: a tenant every node stopped serving starts
// on one node again when next placed. While its home holds it, it stays
// wide however long ago that was (Postgres may have been away).
const SpreadLiveFor = time.Minute

// spreadLive is the condition on tenant_spread w (and tenant_placements p,
// joined on the tenant) of a width that holds: said since the cutoff (the
// parameter named), or since its home took it.
func spreadLive(cutoff string) string {
	return `(w.seen_at >= ` + cutoff + ` OR w.seen_at >= p.since)`
}

// Placement is where a tenant runs: its home, and how many nodes serve it
// (Width 1: its home alone).
type Placement struct {
	Home  Node
	Width int
}

// TenantPlacement is the tenant's home, as that node last announced itself,
// and its width; ok is false if no node holds it.
func (s *Store) TenantPlacement(ctx context.Context, tenant string) (p Placement, ok bool, err error) {
	var url, fwd sql.NullString
	var draining sql.NullBool
	var seen sql.NullTime
	var width sql.NullInt64
	err = s.db.QueryRowContext(ctx, `SELECT p.node, n.url, n.forward_addr, n.draining, n.seen_at, w.width
		FROM tenant_placements p LEFT JOIN data_plane_nodes n ON n.id = p.node
			LEFT JOIN tenant_spread w ON w.tenant = p.tenant AND `+spreadLive("$2")+`
		WHERE p.tenant = $1`, tenant, s.now().UTC().Add(-SpreadLiveFor)).
		Scan(&p.Home.ID, &url, &fwd, &draining, &seen, &width)
	if errors.Is(err, sql.ErrNoRows) {
		return Placement{}, false, nil
	}
	if err != nil {
		return Placement{}, false, err
	}
	p.Home.URL, p.Home.ForwardAddr, p.Home.Draining, p.Home.SeenAt = url.String, fwd.String, draining.Bool, seen.Time.UTC()
	p.Width = max(1, int(width.Int64))
	return p, true, nil
}

// SpreadTenant records that the tenant is served by width nodes from now on
// (1 narrows it to its home), if node is its home; it reports whether it
// was.
func (s *Store) SpreadTenant(ctx context.Context, tenant, node string, width int) (bool, error) {
	res, err := s.db.ExecContext(ctx, `INSERT INTO tenant_spread (tenant, width, seen_at)
		SELECT tenant, $3, $4 FROM tenant_placements WHERE tenant = $1 AND node = $2
		ON CONFLICT (tenant) DO UPDATE SET width = excluded.width, seen_at = excluded.seen_at`,
		tenant, node, width, s.timestamp())
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// TouchSpread records that a node still serves these tenants as one of
// several, and returns their placements now: a tenant missing from the
// result is no longer wide, and one whose Home.ID is empty is wide but no
// node holds it (its home stopped its broker, or retired). A width that no
// longer holds is not made to hold again.
func (s *Store) TouchSpread(ctx context.Context, tenants []string) (map[string]Placement, error) {
	out := make(map[string]Placement, len(tenants))
	if len(tenants) == 0 {
		return out, nil
	}
	// $1 the cutoff, $2 the time now (the update only), then the tenants.
	cutoff := s.now().UTC().Add(-SpreadLiveFor)
	in := func(from int) string { return "(" + placeholders(from, len(tenants)) + ")" }
	args := []any{cutoff, s.timestamp()}
	for _, t := range tenants {
		args = append(args, t)
	}
	if _, err := s.db.ExecContext(ctx, `UPDATE tenant_spread SET seen_at = $2 WHERE tenant IN `+in(3)+`
		AND (seen_at >= $1 OR seen_at >= (SELECT p.since FROM tenant_placements p WHERE p.tenant = tenant_spread.tenant))`, args...); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT w.tenant, w.width, p.node FROM tenant_spread w
		LEFT JOIN tenant_placements p ON p.tenant = w.tenant
		WHERE w.tenant IN `+in(2)+` AND w.width > 1 AND `+spreadLive("$1"), append([]any{cutoff}, args[2:]...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var t string
		var width int
		var home sql.NullString
		if err := rows.Scan(&t, &width, &home); err != nil {
			return nil, err
		}
		out[t] = Placement{Home: Node{ID: home.String}, Width: width}
	}
	return out, rows.Err()
}

// ClaimTenant makes node the tenant's home unless a node seen since the
// cutoff holds it, and returns the home as it is then. The claim is one
// statement, so two nodes claiming at once cannot both win.
func (s *Store) ClaimTenant(ctx context.Context, tenant, node string, liveSince time.Time) (string, error) {
	if _, err := s.db.ExecContext(ctx, `INSERT INTO tenant_placements (tenant, node, since) VALUES ($1, $2, $3)
		ON CONFLICT (tenant) DO UPDATE SET node = excluded.node, since = excluded.since
		WHERE tenant_placements.node = excluded.node
			OR NOT EXISTS (SELECT 1 FROM data_plane_nodes n WHERE n.id = tenant_placements.node AND n.seen_at >= $4)`,
		tenant, node, s.timestamp(), liveSince.UTC()); err != nil {
		return "", err
	}
	return s.TenantHome(ctx, tenant)
}

// TakeTenant makes node the tenant's home in place of from, whose lease
// lapsed, if from still holds it: of two nodes taking it at once one wins.
// It returns the tenant's home afterwards.
func (s *Store) TakeTenant(ctx context.Context, tenant, from, node string) (string, error) {
	if _, err := s.db.ExecContext(ctx, `UPDATE tenant_placements SET node = $3, since = $4 WHERE tenant = $1 AND node = $2`,
		tenant, from, node, s.timestamp()); err != nil {
		return "", err
	}
	return s.TenantHome(ctx, tenant)
}

// ReleaseTenant gives up node's claim on a tenant; another node's claim
// is left alone.
func (s *Store) ReleaseTenant(ctx context.Context, tenant, node string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM tenant_placements WHERE tenant = $1 AND node = $2`, tenant, node)
	return err
}

// TenantsHeldBy lists the tenants a node holds.
func (s *Store) TenantsHeldBy(ctx context.Context, node string) ([]string, error) {
	return s.strings(ctx, `SELECT tenant FROM tenant_placements WHERE node = $1 ORDER BY tenant`, node)
}

// strings runs a query whose rows are one string each.
func (s *Store) strings(ctx context.Context, query string, args ...any) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
