package tenants

import (
	"context"
	"time"
)

// Node is a data-plane node as it announced itself.
type Node struct {
	ID     string
	URL    string
	SeenAt time.Time
}

// AnnounceNode records that a data-plane node is up at url.
func (s *Store) AnnounceNode(ctx context.Context, id, url string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO data_plane_nodes (id, url, seen_at) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET url = excluded.url, seen_at = excluded.seen_at`, id, url, s.timestamp())
	return err
}

// RetireNode removes a node that is going away.
func (s *Store) RetireNode(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM data_plane_nodes WHERE id = $1`, id)
	return err
}

// Nodes lists the nodes seen since the cutoff, by id; older rows are
// deleted on the way (a node that died without retiring).
func (s *Store) Nodes(ctx context.Context, seenSince time.Time) ([]Node, error) {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM data_plane_nodes WHERE seen_at < $1`, seenSince.UTC().Add(-time.Hour)); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT id, url, seen_at FROM data_plane_nodes WHERE seen_at >= $1 ORDER BY id`, seenSince.UTC())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		var n Node
		if err := rows.Scan(&n.ID, &n.URL, &n.SeenAt); err != nil {
			return nil, err
		}
		n.SeenAt = n.SeenAt.UTC()
		out = append(out, n)
	}
	return out, rows.Err()
}
