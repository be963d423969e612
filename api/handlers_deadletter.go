package api

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// deliveries returns the data plane's deliveries, nil if it has none (no
// data plane configured, as in some tests).
func (s *Server) deliveries() dataplane.Deliveries {
	dl, _ := s.dataPlane.(dataplane.Deliveries)
	return dl
}

// errNoDeliveries answers a dead-letter request without a data plane.
var errNoDeliveries = fmt.Errorf("dead letters are kept by the data plane, which this API has none of: %w", tenants.ErrUnavailable)

// deadLetterDestination checks the destination is the tenant's, so that a
// dead-letter request never reaches another tenant's outbox.
func deadLetterDestination(r *http.Request, ds destinationStore, dl dataplane.Deliveries) (string, string, error) {
	tenant := chi.URLParam(r, "tenant")
	d, err := ds.Destination(r.Context(), tenant, chi.URLParam(r, "id"))
	if err != nil {
		return "", "", err
	}
	if dl == nil {
		return "", "", errNoDeliveries
	}
	return tenant, d.ID, nil
}

// handleDeadLetterList lists a destination's dead letters, oldest first; a
// page's next cursor is the last one's seq.
func handleDeadLetterList(ds destinationStore, dl dataplane.Deliveries) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		tenant, id, err := deadLetterDestination(r, ds, dl)
		if err != nil {
			return err
		}
		p, err := page(r)
		if err != nil {
			return err
		}
		limit := p.Limit
		if limit == 0 {
			limit = 50
		}
		var after uint64
		if p.Cursor != "" {
			if after, err = strconv.ParseUint(p.Cursor, 10, 64); err != nil {
				return &httpError{status: http.StatusBadRequest, code: "invalid", field: "cursor", msg: "cursor is not one this API returned"}
			}
		}
		items, more, err := dl.DeadLetters(r.Context(), tenant, id, after, limit)
		if err != nil {
			return err
		}
		next := ""
		if len(items) > 0 && (len(items) == limit || more) {
			next = strconv.FormatUint(items[len(items)-1].Seq, 10)
		}
		writeJSON(w, http.StatusOK, newList(items, next))
		return nil
	}
}

// deadLetterCount answers a replay or purge.
type deadLetterCount struct {
	Replayed *int `json:"replayed,omitempty"`
	Purged   *int `json:"purged,omitempty"`
}

// handleDeadLetterReplay moves a destination's dead letters back to its
// outbox, to be delivered again in order.
func handleDeadLetterReplay(ds destinationStore, dl dataplane.Deliveries) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		tenant, id, err := deadLetterDestination(r, ds, dl)
		if err != nil {
			return err
		}
		n, err := dl.ReplayDeadLetters(r.Context(), tenant, id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, deadLetterCount{Replayed: &n})
		return nil
	}
}

// handleDeadLetterPurge deletes a destination's dead letters.
func handleDeadLetterPurge(ds destinationStore, dl dataplane.Deliveries) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		tenant, id, err := deadLetterDestination(r, ds, dl)
		if err != nil {
			return err
		}
		n, err := dl.PurgeDeadLetters(r.Context(), tenant, id)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, deadLetterCount{Purged: &n})
		return nil
	}
}
