package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// resealEvery is how often a control plane looks for secrets sealed under
// an earlier operator token, while ROOST_SECRET_KEYS_OLD names one.
const resealEvery = time.Hour

// resealSecrets seals the destinations' and the accounts' two-factor
// secrets sealed under an earlier operator token (ROOST_SECRET_KEYS_OLD)
// again under the current one: at start, then every interval, as long as
// the process runs with earlier tokens (during a rolling change a process
// still on the old token seals new values under it). Once a pass leaves
// none, it logs that the earlier tokens can be dropped. Two control planes
// doing it at once do no harm: each row is replaced only if it still
// holds what was read.
func resealSecrets(ctx context.Context, sealer *dataout.Sealer, st *tenants.Store, front *auth.Service, every time.Duration, log *slog.Logger) {
	if len(sealer.OldPrefixes()) == 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	told := false
	for {
		dests, derr := sealer.ResealDestinations(ctx, st, log)
		mfa, merr := front.ResealMFA(ctx)
		resealed, failed := dests.Resealed+mfa.Resealed, dests.Failed+mfa.Failed
		switch {
		case ctx.Err() != nil:
			return
		case derr != nil || merr != nil:
			log.Warn("seal secrets again under the current operator token", "resealed", resealed, "err", errors.Join(derr, merr))
			told = false
		case failed > 0:
			log.Warn("secrets sealed under an earlier operator token do not open; the earlier token stays needed until they are set again",
				"resealed", resealed, "not_opening", failed)
			told = false
		case !told:
			log.Info("every secret is sealed under the current operator token: ROOST_SECRET_KEYS_OLD can be emptied", "resealed", resealed)
			told = true
		case resealed > 0:
			log.Info("secrets sealed again under the current operator token", "resealed", resealed)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
