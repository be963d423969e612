package api

import (
	"context"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

type eventStore interface {
	Events(ctx context.Context, tenant string, q tenants.EventQuery) ([]events.Event, string, error)
}

// handleEvents lists a page of the tenant's stored events, newest first.
func handleEvents(es eventStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		q, err := eventQuery(r)
		if err != nil {
			return err
		}
		items, next, err := es.Events(r.Context(), chi.URLParam(r, "tenant"), q)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, newList(items, next))
		return nil
	}
}

// eventQuery reads the page and the filters of a request for events:
// type, device, since and until (RFC 3339).
func eventQuery(r *http.Request) (tenants.EventQuery, error) {
	p, err := page(r)
	if err != nil {
		return tenants.EventQuery{}, err
	}
	v := r.URL.Query()
	q := tenants.EventQuery{Page: p, Type: v.Get("type"), Device: v.Get("device")}
	for _, f := range []struct {
		name string
		to   *time.Time
	}{{"since", &q.Since}, {"until", &q.Until}} {
		if s := v.Get(f.name); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return q, &httpError{status: http.StatusBadRequest, code: "invalid", field: f.name, msg: f.name + " must be a time in RFC 3339, such as 2026-03-01T12:00:00Z"}
			}
			*f.to = t
		}
	}
	return q, q.Validate()
}
