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
// still on the old token seals new values under it). A pass that found
// some is followed at once by one that checks none is left, since values
// changed or added meanwhile are not the first pass's. Once a pass finds
// none, it says so: the earlier tokens can be dropped once every process
// runs with the current one. It says so again only after a pass that found
// some. Values that do not open (damaged, or copied from another row) open
// under no key, the earlier ones included: they are reported apart and do
// not hold the earlier tokens back. Two control planes doing this at once
// do no harm: each row is replaced only if it still holds what was read.
func resealSecrets(ctx context.Context, sealer *dataout.Sealer, st *tenants.Store, front *auth.Service, every time.Duration, log *slog.Logger) {
	if len(sealer.OldPrefixes()) == 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	told, check := false, false
	for {
		dests, derr := sealer.ResealDestinations(ctx, st, log)
		mfa, merr := front.ResealMFA(ctx)
		n := dests.Add(mfa)
		if ctx.Err() != nil {
			return
		}
		if n.Failed > 0 {
			log.Warn("sealed secrets that open under no key (damaged, or copied from another row): rotate them; the earlier operator token does not open them either",
				"not_opening", n.Failed)
		}
		switch {
		case derr != nil || merr != nil:
			log.Warn("seal secrets again under the current operator token", "resealed", n.Resealed, "err", errors.Join(derr, merr))
			told, check = false, false
		case n.Found() > 0:
			log.Info("secrets sealed again under the current operator token", "resealed", n.Resealed, "changed_meanwhile", n.Skipped)
			told = false
			if !check {
				check = true
				continue // look again now: what changed meanwhile
			}
		case !told:
			log.Info("no secret is sealed under an earlier operator token now: once every process runs with the current one, ROOST_SECRET_KEYS_OLD can be emptied")
			told = true
		}
		check = false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
