package tenants

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/roosthub/roost/migrations"
)

// changeChannel is the Postgres channel that carries committed changes to
// the other processes on the same database.
const changeChannel = "roost_changes"

// notify sends the changes on the channel as part of tx: Postgres delivers
// a NOTIFY when its transaction commits, and never when it rolls back.
func (s *Store) notify(ctx context.Context, tx *sql.Tx, changes ...Change) error {
	if s.dialect != migrations.Postgres {
		return nil
	}
	for _, c := range changes {
		b, err := json.Marshal(c)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `SELECT pg_notify($1, $2)`, changeChannel, string(b)); err != nil {
			return fmt.Errorf("notify %s change: %w", c.Kind, err)
		}
	}
	return nil
}

// ListenChanges delivers to bus the changes that any process commits to
// the Postgres database at databaseURL, until ctx ends. A lost connection
// is retried with backoff (100 ms doubling to 5 s). Each time the listener
// is (back) up, bus gets a Resync: what was committed while it was not
// listening is unknown. connected,
// if not nil, is told each time the listener is (or is no longer) live.
func ListenChanges(ctx context.Context, databaseURL string, bus *Bus, log *slog.Logger, connected func(bool)) {
	if connected == nil {
		connected = func(bool) {}
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := listenOnce(ctx, databaseURL, func() {
			connected(true)
			backoff = 100 * time.Millisecond
			// Whatever was cached before this connection may be stale.
			log.Info("listening for directory changes")
			bus.Publish(Change{Kind: Resync})
		}, bus)
		connected(false)
		if ctx.Err() != nil {
			return
		}
		log.Warn("change listener lost its connection; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func listenOnce(ctx context.Context, databaseURL string, up func(), bus *Bus) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.Connect(cctx, databaseURL)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+changeChannel); err != nil {
		return err
	}
	up()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		var c Change
		if err := json.Unmarshal([]byte(n.Payload), &c); err != nil || c.Kind == "" {
			continue // not ours
		}
		bus.Publish(c)
	}
}
