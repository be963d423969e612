package web

import (
	"errors"
	"net/http"
	"time"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// recentEvents returns the tenant's ten newest events, for the overview;
// none when the store cannot say (the page shows the rest).
func (c *Console) recentEvents(r *http.Request, tenant string) []events.Event {
	es, _, err := c.store.Events(r.Context(), tenant, tenants.EventQuery{Page: tenants.Page{Limit: 10}})
	if err != nil {
		c.cfg.Log.Warn("read recent events", "tenant", tenant, "err", err)
		return nil
	}
	return es
}

type eventsData struct {
	Type, Device string
	Types        []string
	Events       []events.Event
	// Next is the cursor of the next (older) page; Retention how long the
	// tenant's events are kept.
	Next      string
	Retention string
}

// eventsPage lists the tenant's stored events, newest first, a page at a
// time, by type and device.
func (c *Console) eventsPage(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	v := r.URL.Query()
	q := tenants.EventQuery{Page: tenants.Page{Limit: 50, Cursor: v.Get("after")}, Type: v.Get("type"), Device: v.Get("device")}
	d := eventsData{Type: q.Type, Device: q.Device, Types: events.Types, Retention: retention(t.Quotas().EventRetentionPeriod())}
	status := http.StatusOK
	var errs map[string]string
	es, next, err := c.store.Events(r.Context(), t.Slug, q)
	switch {
	case err == nil:
		d.Events, d.Next = es, next
	case errors.Is(err, tenants.ErrInvalid):
		status, errs = http.StatusBadRequest, formErrors(err)
	case r.Context().Err() != nil:
		return // the browser left: nothing to answer, nothing to log
	default:
		c.internal(w, r, err)
		return
	}
	c.render(w, r, status, "events.html", page{Title: "Events", Nav: "events", Data: d, Errors: errs})
}

// retention says a retention period in days or hours.
func retention(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return formatNum(int64(d/(24*time.Hour))) + " days"
	case d >= 24*time.Hour:
		return "1 day"
	}
	return formatNum(int64(d/time.Hour)) + " hours"
}
