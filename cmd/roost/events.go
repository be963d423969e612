package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/roosthub/roost/tenants"
)

// eventPruneEvery is how often a control plane deletes events past their
// tenant's event_retention.
const eventPruneEvery = 10 * time.Minute

// pruneEvents deletes events past their retention now and then, 1,000 rows
// a statement and at most 100 statements per tenant a run, so that a
// backlog is worked off over a few runs without a long transaction.
func pruneEvents(ctx context.Context, store *tenants.Store, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if n, err := store.PruneEvents(ctx, 1000, 100); err != nil && ctx.Err() == nil {
			log.Warn("prune events", "err", err)
		} else if n > 0 {
			log.Info("pruned events past their retention", "rows", n)
		}
		// App streams' leases left by processes that died, of tenants
		// nobody opens a stream of again (an open deletes its tenant's).
		if _, err := store.PruneStreams(ctx); err != nil && ctx.Err() == nil {
			log.Warn("prune stream leases", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
