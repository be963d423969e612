package tenants

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

const destinationColumns = `id, name, type, url, header_names, sealed_headers, sealed_secret, kafka, sealed_password, outbox_policy, max_outbox, created_at, updated_at`

func scanDestination(row interface{ Scan(...any) error }) (Destination, error) {
	var d Destination
	var names, kafka string
	if err := row.Scan(&d.ID, &d.Name, &d.Type, &d.URL, &names, &d.Sealed.Headers, &d.Sealed.Secret, &kafka, &d.Sealed.Password, &d.OutboxPolicy, &d.MaxOutbox, &d.CreatedAt, &d.UpdatedAt); err != nil {
		return d, err
	}
	if err := json.Unmarshal([]byte(names), &d.Headers); err != nil {
		return d, fmt.Errorf("destination %s: header names: %w", d.ID, err)
	}
	if kafka != "" {
		if err := json.Unmarshal([]byte(kafka), &d.Kafka); err != nil {
			return d, fmt.Errorf("destination %s: kafka: %w", d.ID, err)
		}
	}
	if d.Headers == nil {
		d.Headers = []string{}
	}
	d.CreatedAt, d.UpdatedAt = d.CreatedAt.UTC(), d.UpdatedAt.UTC()
	return d, nil
}

// Destinations returns a tenant's destinations, oldest first.
func (s *Store) Destinations(ctx context.Context, tenant string) ([]Destination, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+destinationColumns+` FROM destinations WHERE tenant = $1 ORDER BY id`, tenant)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Destination
	for rows.Next() {
		d, err := scanDestination(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// Destination returns one of a tenant's destinations by id.
func (s *Store) Destination(ctx context.Context, tenant, id string) (Destination, error) {
	d, err := scanDestination(s.db.QueryRowContext(ctx,
		`SELECT `+destinationColumns+` FROM destinations WHERE tenant = $1 AND id = $2`, tenant, id))
	return d, notFound(err, "destination %s", id)
}

// destinationRef finds a destination by id or, failing that, by name.
func (s *Store) destinationRef(ctx context.Context, q interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}, tenant, ref string) (Destination, error) {
	d, err := scanDestination(q.QueryRowContext(ctx,
		`SELECT `+destinationColumns+` FROM destinations WHERE tenant = $1 AND (id = $2 OR name = $2) ORDER BY id LIMIT 1`, tenant, ref))
	return d, notFound(err, "destination %s", ref)
}

// DestinationByRef returns a destination by id or name.
func (s *Store) DestinationByRef(ctx context.Context, tenant, ref string) (Destination, error) {
	return s.destinationRef(ctx, s.db, tenant, ref)
}

// NewDestinationID returns an id for a destination about to be made, so
// that the caller can seal its secret bound to it.
func NewDestinationID() string { return newID("dst_") }

// CreateDestination adds a destination with the id the caller chose (from
// NewDestinationID) and the values it sealed.
func (s *Store) CreateDestination(ctx context.Context, tenant, id string, in DestinationInput, sealed Sealed) (Destination, error) {
	if err := in.Validate(); err != nil {
		return Destination{}, err
	}
	switch {
	case !strings.HasPrefix(id, "dst_"):
		return Destination{}, fmt.Errorf("create destination: an id from NewDestinationID is needed")
	case in.Type == DestinationWebhook && sealed.Secret == "":
		return Destination{}, fmt.Errorf("create destination: a webhook needs a sealed secret")
	case in.Type == DestinationKafka && (in.Kafka.SASL != nil) != (sealed.Password != ""):
		return Destination{}, fmt.Errorf("create destination: a Kafka destination with SASL needs a sealed password, one without none")
	}
	now := s.timestamp()
	d := Destination{ID: id, Name: in.Name, Type: in.Type, URL: in.URL, Headers: HeaderNames(in.Headers), Kafka: in.Kafka.Public(),
		OutboxPolicy: in.OutboxPolicy, MaxOutbox: in.MaxOutbox, CreatedAt: now, UpdatedAt: now, Sealed: sealed}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM destinations WHERE tenant = $1`, tenant).Scan(&n); err != nil {
			return err
		}
		if n >= MaxDestinations {
			return &QuotaError{Quota: "destinations", Limit: MaxDestinations}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO destinations (tenant, `+destinationColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
			tenant, d.ID, d.Name, d.Type, d.URL, marshalJSON(d.Headers), sealed.Headers, sealed.Secret, kafkaJSON(d.Kafka), sealed.Password,
			string(d.OutboxPolicy), d.MaxOutbox, d.CreatedAt, d.UpdatedAt); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("destination %s: %w", d.Name, ErrConflict)
			}
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO destination_outboxes (tenant, id) VALUES ($1, $2)`, tenant, d.ID); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "destination.create", "destination:"+d.ID)
	})
	return d, err
}

// UpdateDestination changes a destination. sealHeaders seals new header
// values, when the update gives headers.
func (s *Store) UpdateDestination(ctx context.Context, tenant, id string, up DestinationUpdate, sealHeaders func(map[string]string) string) (Destination, error) {
	if err := up.Validate(); err != nil {
		return Destination{}, err
	}
	var d Destination
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		d, err = scanDestination(tx.QueryRowContext(ctx,
			`SELECT `+destinationColumns+` FROM destinations WHERE tenant = $1 AND id = $2`, tenant, id))
		if err != nil {
			return notFound(err, "destination %s", id)
		}
		if up.Name != nil {
			d.Name = *up.Name
		}
		if d.Type == DestinationKafka && (up.URL != nil || up.Headers != nil) {
			return invalid("url", "url and headers are for webhooks")
		}
		if d.Type != DestinationKafka && up.Kafka != nil {
			return invalid("kafka", "is for Kafka destinations")
		}
		if up.Kafka != nil {
			switch {
			case up.Kafka.SASL == nil:
				d.Sealed.Password = ""
			case up.SealedPassword != "":
				d.Sealed.Password = up.SealedPassword
			case d.Sealed.Password == "":
				return invalid("kafka.sasl.password", "is required (none was set before)")
			case !sameKafkaEndpoint(d.Kafka, up.Kafka):
				// Kept, the password would go wherever the new settings
				// say: an admin could point them at a broker of theirs
				// (or downgrade SCRAM to PLAIN) and read it.
				return invalid("kafka.sasl.password", "is required again when the brokers, TLS, CA, server name, mechanism or user name change")
			}
			d.Kafka = up.Kafka.Public()
		}
		if up.URL != nil {
			if up.Headers == nil && d.Sealed.Headers != "" && !sameOrigin(d.URL, *up.URL) {
				// Kept, the header values (often a credential) would go
				// wherever the new URL says, as a Kafka password would.
				return invalid("headers", "are required again ({} to send none) when the URL's scheme, host or port change")
			}
			d.URL = *up.URL
		}
		if up.OutboxPolicy != nil {
			d.OutboxPolicy = *up.OutboxPolicy
		}
		if up.MaxOutbox != nil {
			d.MaxOutbox = *up.MaxOutbox
		}
		if up.Headers != nil {
			d.Headers, d.Sealed.Headers = HeaderNames(*up.Headers), ""
			if len(*up.Headers) > 0 {
				d.Sealed.Headers = sealHeaders(*up.Headers)
			}
		}
		d.UpdatedAt = s.timestamp()
		if _, err := tx.ExecContext(ctx, `UPDATE destinations SET name = $3, url = $4, header_names = $5, sealed_headers = $6, updated_at = $7,
			kafka = $8, sealed_password = $9, outbox_policy = $10, max_outbox = $11
			WHERE tenant = $1 AND id = $2`, tenant, id, d.Name, d.URL, marshalJSON(d.Headers), d.Sealed.Headers, d.UpdatedAt,
			kafkaJSON(d.Kafka), d.Sealed.Password, string(d.OutboxPolicy), d.MaxOutbox); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("destination %s: %w", d.Name, ErrConflict)
			}
			return err
		}
		return s.audit(ctx, tx, tenant, "destination.update", "destination:"+id)
	}, Change{Kind: ExportChanged, Tenant: tenant})
	return d, err
}

// kafkaJSON is how a Kafka destination's settings (without password) are
// stored; "" for a webhook.
func kafkaJSON(k *Kafka) string {
	if k == nil {
		return ""
	}
	return marshalJSON(k.Public())
}

// RotateDestinationSecret replaces a destination's sealed signing secret.
func (s *Store) RotateDestinationSecret(ctx context.Context, tenant, id, sealedSecret string) (Destination, error) {
	var d Destination
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE destinations SET sealed_secret = $3, updated_at = $4 WHERE tenant = $1 AND id = $2`,
			tenant, id, sealedSecret, s.timestamp())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("destination %s: %w", id, ErrNotFound)
		}
		if d, err = scanDestination(tx.QueryRowContext(ctx,
			`SELECT `+destinationColumns+` FROM destinations WHERE tenant = $1 AND id = $2`, tenant, id)); err != nil {
			return err
		}
		return s.audit(ctx, tx, tenant, "destination.rotate_secret", "destination:"+id)
	}, Change{Kind: ExportChanged, Tenant: tenant})
	return d, err
}

// ResealDestination replaces a destination's sealed values with to, as
// long as they are still from: the hub seals them again under a new key
// (the same secret, password and header values), and a concurrent
// change (a rotation) wins. It reports whether it replaced them. The
// values' meaning does not change, so no change is raised nor audited.
func (s *Store) ResealDestination(ctx context.Context, tenant, id string, from, to Sealed) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE destinations SET sealed_secret = $3, sealed_headers = $4, sealed_password = $5
		WHERE tenant = $1 AND id = $2 AND sealed_secret = $6 AND sealed_headers = $7 AND sealed_password = $8`,
		tenant, id, to.Secret, to.Headers, to.Password, from.Secret, from.Headers, from.Password)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// DeleteDestination removes a destination no rule uses; one a rule uses
// is a conflict (delete the rules first).
func (s *Store) DeleteDestination(ctx context.Context, tenant, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM export_rules WHERE tenant = $1 AND destination = $2`, tenant, id).Scan(&n); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM destinations WHERE tenant = $1 AND id = $2`, tenant, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("destination %s: %w", id, ErrNotFound)
		}
		if n > 0 {
			return fmt.Errorf("destination %s: %d rules send to it; delete them first: %w", id, n, ErrConflict)
		}
		return s.audit(ctx, tx, tenant, "destination.delete", "destination:"+id)
	}, Change{Kind: ExportChanged, Tenant: tenant})
}

// GoneOutboxes lists the destinations that had an outbox and are deleted
// since, with their tenants deleted or not: their outboxes and dead
// letters in the session store are to be deleted, then forgotten with
// ForgetOutbox. At most limit.
func (s *Store) GoneOutboxes(ctx context.Context, limit int) ([]OutboxRef, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT o.tenant, o.id FROM destination_outboxes o
		LEFT JOIN destinations d ON d.tenant = o.tenant AND d.id = o.id
		WHERE d.id IS NULL ORDER BY o.tenant, o.id LIMIT $1`, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []OutboxRef
	for rows.Next() {
		var r OutboxRef
		if err := rows.Scan(&r.Tenant, &r.Destination); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// OutboxRef names a destination's outbox in the session store.
type OutboxRef struct {
	Tenant, Destination string
}

// ForgetOutbox forgets a deleted destination's outbox, once the data
// plane deleted it. A destination that exists is not forgotten.
func (s *Store) ForgetOutbox(ctx context.Context, tenant, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM destination_outboxes WHERE tenant = $1 AND id = $2
		AND NOT EXISTS (SELECT 1 FROM destinations WHERE tenant = $1 AND id = $2)`, tenant, id)
	return err
}

// sameKafkaEndpoint reports whether a Kafka destination's new settings send
// its password where the old ones did, the same way.
func sameKafkaEndpoint(old, up *Kafka) bool {
	if old == nil || up == nil || old.SASL == nil || up.SASL == nil {
		return false
	}
	return slices.Equal(old.Brokers, up.Brokers) && old.TLS == up.TLS && samePEM(old.CA, up.CA) && old.ServerName == up.ServerName &&
		old.SASL.Mechanism == up.SASL.Mechanism && old.SASL.Username == up.SASL.Username
}

// samePEM reports whether two CA fields say the same, whatever their line
// ends and the blank space around them (a browser's form sends CRLF).
func samePEM(a, b string) bool {
	norm := func(s string) string { return strings.TrimSpace(strings.ReplaceAll(s, "\r\n", "\n")) }
	return norm(a) == norm(b)
}

// sameOrigin reports whether two webhook URLs go to the same scheme, host
// and port; an unparsable one is another origin.
func sameOrigin(a, b string) bool {
	ua, erra := url.Parse(a)
	ub, errb := url.Parse(b)
	return erra == nil && errb == nil && strings.EqualFold(ua.Scheme, ub.Scheme) && strings.EqualFold(ua.Host, ub.Host)
}
