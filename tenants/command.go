package tenants

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"time"
)

// Commands queued for a device (docs/commands.md): the data plane records
// a command sent with "queue": true before publishing it, and the device's
// reply when it comes, so that the API can say what became of it after
// the request that sent it ended.

// The states of a queued command.
const (
	CommandQueued  = "queued"  // no reply yet, not expired
	CommandReplied = "replied" // the device replied before it expired
	CommandExpired = "expired" // it expired without a reply: not delivered after, a reply ignored
)

// CommandRetention is how long a command is kept after it expires, to be
// read; MaxStoredCommands bounds the finished (replied or expired)
// commands a tenant keeps: the oldest go first.
// MaxRecordedReply bounds the reply recorded for a queued command: a
// larger one is not recorded (the command stays pending, then expires).
const (
	CommandRetention  = time.Hour
	MaxStoredCommands = 1000
	MaxRecordedReply  = 64 << 10
)

// ErrReplyTooLarge refuses to record a reply over MaxRecordedReply.
var ErrReplyTooLarge = errors.New("reply too large to record")

// QueuedCommand is a command queued for a device and what became of it.
type QueuedCommand struct {
	ID               string     `json:"id"`
	Device           string     `json:"device"`
	Name             string     `json:"name"`
	Topic            string     `json:"topic"`
	CreatedAt        time.Time  `json:"created_at"`
	ExpiresAt        time.Time  `json:"expires_at"`
	RepliedAt        *time.Time `json:"replied_at,omitempty"`
	Reply            []byte     `json:"-"`
	ReplyContentType string     `json:"-"`
}

// Status is the command's state at now.
func (c QueuedCommand) Status(now time.Time) string {
	switch {
	case c.RepliedAt != nil:
		return CommandReplied
	case now.Before(c.ExpiresAt):
		return CommandQueued
	}
	return CommandExpired
}

// QueueCommand records a command queued for a device, to expire ttl from
// now (the store's clock; the returned command has its times). The tenant
// may have at most its max_pending_commands pending (no reply, not
// expired): past them it is a *QuotaError, wrapped in a *RetryError
// saying when the first of them expires. The device must exist. Expired
// commands past CommandRetention, and finished ones past
// MaxStoredCommands, are deleted on the way.
func (s *Store) QueueCommand(ctx context.Context, tenant string, c QueuedCommand, ttl time.Duration) (QueuedCommand, error) {
	now := s.timestamp()
	c.CreatedAt, c.ExpiresAt, c.RepliedAt = now, now.Add(ttl), nil
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		t, err := s.scanTenant(tx.QueryRowContext(ctx, `SELECT `+tenantColumns+` FROM tenants t WHERE t.slug = $1`, tenant))
		if err != nil {
			return err
		}
		var n int64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices WHERE tenant = $1 AND name = $2`, tenant, c.Device).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("device %s: %w", c.Device, ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM commands WHERE tenant = $1 AND expires_at < $2`, tenant, now.Add(-CommandRetention)); err != nil {
			return err
		}
		const pendingWhere = `tenant = $1 AND replied_at IS NULL AND expires_at > $2`
		var pending int64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM commands WHERE `+pendingWhere, tenant, now).Scan(&pending); err != nil {
			return err
		}
		if limit := t.Quotas().MaxPendingCommands; pending >= limit {
			wait := time.Second
			var first time.Time
			err := tx.QueryRowContext(ctx, `SELECT expires_at FROM commands WHERE `+pendingWhere+` ORDER BY expires_at LIMIT 1`, tenant, now).Scan(&first)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			if err == nil {
				wait = max(wait, first.Sub(now))
			}
			return &RetryError{Kind: &QuotaError{Quota: "max_pending_commands", Limit: limit}, After: wait,
				Msg: fmt.Sprintf("the tenant has %d commands pending (max_pending_commands); the first expires in %s", pending, wait.Round(time.Second))}
		}
		var finished int64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM commands WHERE tenant = $1 AND (replied_at IS NOT NULL OR expires_at <= $2)`,
			tenant, now).Scan(&finished); err != nil {
			return err
		}
		if over := finished - MaxStoredCommands + 1; over > 0 {
			if _, err := tx.ExecContext(ctx, `DELETE FROM commands WHERE id IN (SELECT id FROM commands WHERE tenant = $1 AND (replied_at IS NOT NULL OR expires_at <= $2)
				ORDER BY created_at, id LIMIT $3)`, tenant, now, over); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO commands (id, tenant, device, name, topic, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			c.ID, tenant, c.Device, c.Name, c.Topic, c.CreatedAt, c.ExpiresAt)
		if isUniqueViolation(err) {
			return fmt.Errorf("command %s exists: %w", c.ID, ErrConflict)
		}
		return err
	})
	if err != nil {
		return QueuedCommand{}, err
	}
	return c, nil
}

// ForgetCommand deletes a queued command that could not be published.
func (s *Store) ForgetCommand(ctx context.Context, tenant, id string) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM commands WHERE tenant = $1 AND id = $2`, tenant, id)
	return err
}

// ReplyCommand records the device's reply to its queued command id: only
// the first reply, and only before the command expires; false if there
// was no such command waiting (another device's, unknown, expired or
// replied already).
func (s *Store) ReplyCommand(ctx context.Context, tenant, device, id string, reply []byte, contentType string) (bool, error) {
	if len(reply) > MaxRecordedReply {
		return false, ErrReplyTooLarge
	}
	now := s.timestamp()
	res, err := s.db.ExecContext(ctx, `UPDATE commands SET replied_at = $4, reply = $5, reply_content_type = $6
		WHERE tenant = $1 AND device = $2 AND id = $3 AND replied_at IS NULL AND expires_at > $4`,
		tenant, device, id, now, base64.StdEncoding.EncodeToString(reply), contentType)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// Command returns a device's queued command.
func (s *Store) Command(ctx context.Context, tenant, device, id string) (QueuedCommand, error) {
	var c QueuedCommand
	var replied sql.NullTime
	var reply string
	err := s.db.QueryRowContext(ctx, `SELECT id, device, name, topic, created_at, expires_at, replied_at, reply, reply_content_type
		FROM commands WHERE tenant = $1 AND device = $2 AND id = $3`, tenant, device, id).
		Scan(&c.ID, &c.Device, &c.Name, &c.Topic, &c.CreatedAt, &c.ExpiresAt, &replied, &reply, &c.ReplyContentType)
	if errors.Is(err, sql.ErrNoRows) {
		return QueuedCommand{}, fmt.Errorf("command %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return QueuedCommand{}, err
	}
	c.CreatedAt, c.ExpiresAt, c.RepliedAt = c.CreatedAt.UTC(), c.ExpiresAt.UTC(), nullTime(replied)
	if c.RepliedAt != nil {
		if c.Reply, err = base64.StdEncoding.DecodeString(reply); err != nil {
			return QueuedCommand{}, fmt.Errorf("command %s: reply: %w", id, err)
		}
	}
	return c, nil
}

// Now is the store's clock, which the states of queued commands are read
// by.
func (s *Store) Now() time.Time { return s.timestamp() }

// AuditCommand records in the tenant's audit log that the actor in ctx
// sent a command (its name and id) to a device.
func (s *Store) AuditCommand(ctx context.Context, tenant, device, name, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		return s.audit(ctx, tx, tenant, "device.command", "device:"+device+"/command:"+name+"/"+id)
	})
}
