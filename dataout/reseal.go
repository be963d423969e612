package dataout

import (
	"context"
	"errors"
	"log/slog"

	"github.com/roosthub/roost/tenants"
)

// ResealStore finds the destinations with values sealed under old keys
// and writes them sealed again (tenants.Store has it).
type ResealStore interface {
	Resealer
	DestinationsSealedUnder(ctx context.Context, prefixes []string, afterTenant, afterID string, limit int) ([]tenants.TenantDestination, error)
}

// ResealCount is what a pass over sealed values did.
type ResealCount struct {
	// Resealed is how many were sealed again under the current key.
	Resealed int
	// Skipped is how many changed between their read and their write (a
	// rotation, a new setup) and were left to that change.
	Skipped int
	// Failed is how many did not open (damaged, or copied from another
	// row) and were left as they are: the earlier key does not open them
	// either. The first few of a pass are logged.
	Failed int
}

// Found is how many values under an earlier key the pass found that open
// with it: those that still needed the earlier key when it began.
func (n ResealCount) Found() int { return n.Resealed + n.Skipped }

// Written counts a value the pass wrote sealed again (wrote), or one
// that changed between its read and its write.
func (n *ResealCount) Written(wrote bool) {
	if wrote {
		n.Resealed++
	} else {
		n.Skipped++
	}
}

// Add adds m's counts to n.
func (n ResealCount) Add(m ResealCount) ResealCount {
	return ResealCount{Resealed: n.Resealed + m.Resealed, Skipped: n.Skipped + m.Skipped, Failed: n.Failed + m.Failed}
}

// LogFailed is how many values that do not open a pass logs, one by
// one; the rest are counted.
const LogFailed = 10

// resealPage is how many rows a pass reads at a time.
const resealPage = 100

// ResealDestinations seals every destination's values sealed under an
// old key of the ring again under the current key, so that the old key
// can be dropped without a send to each destination first (Refresh does
// the same for one destination as it is read). A row changed meanwhile
// (a rotation) is left to its change. With no old key it does nothing.
func (s *Sealer) ResealDestinations(ctx context.Context, st ResealStore, log *slog.Logger) (ResealCount, error) {
	var n ResealCount
	prefixes := s.OldPrefixes()
	if len(prefixes) == 0 {
		return n, nil
	}
	afterTenant, afterID := "", ""
	for {
		page, err := st.DestinationsSealedUnder(ctx, prefixes, afterTenant, afterID, resealPage)
		if err != nil {
			return n, err
		}
		for _, d := range page {
			if !s.staleSealed(d.Sealed) {
				continue // not under an earlier key after all (SQLite's match ignores case)
			}
			wrote, err := s.refresh(ctx, st, d.Tenant, d.Destination)
			switch {
			case ctx.Err() != nil:
				return n, ctx.Err()
			case errors.Is(err, errUnopened):
				n.Failed++
				if n.Failed <= LogFailed {
					log.Warn("destination sealed under an earlier key does not open: rotate its secret (or set its Kafka password again)",
						"tenant", d.Tenant, "destination", d.ID, "err", err)
				}
			case err != nil:
				return n, err
			default:
				n.Written(wrote)
			}
		}
		if len(page) < resealPage {
			return n, nil
		}
		last := page[len(page)-1]
		afterTenant, afterID = last.Tenant, last.ID
	}
}
