package web

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// webhookRow is one destination on the webhooks page.
type webhookRow struct {
	tenants.Destination
	// Host is the URL's scheme and host: its path often holds a credential.
	Host string
	// Rules counts the rules that send to it.
	Rules int
	// Status is its delivery's status; nil when the data plane cannot say.
	Status *dataplane.DeliveryStatus
}

// deliveries returns the data plane's deliveries, nil if it has none.
func (c *Console) deliveries() dataplane.Deliveries {
	dl, _ := c.cfg.DataPlane.(dataplane.Deliveries)
	return dl
}

// webhooksPage shows each destination with how its delivery goes: what
// waits, how late, what gave up, what was delivered, the last error.
func (c *Console) webhooksPage(w http.ResponseWriter, r *http.Request) {
	ctx, slug := r.Context(), tenantOf(r).Slug
	ds, err := c.store.Destinations(ctx, slug)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	rules, err := c.store.Rules(ctx, slug)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	dl := c.deliveries()
	rows := make([]webhookRow, len(ds))
	for i, d := range ds {
		rows[i] = webhookRow{Destination: d, Host: "…"}
		if u, err := url.Parse(d.URL); err == nil {
			rows[i].Host = u.Scheme + "://" + u.Host
		}
		for _, rule := range rules {
			if rule.Destination == d.ID {
				rows[i].Rules++
			}
		}
		if dl == nil {
			continue
		}
		switch st, err := dl.DeliveryStatus(ctx, slug, d.ID); {
		case errors.Is(err, tenants.ErrUnavailable):
		case err != nil:
			c.internal(w, r, err)
			return
		default:
			rows[i].Status = &st
		}
	}
	c.render(w, r, http.StatusOK, "webhooks.html", page{Title: "Webhooks", Nav: "webhooks", Data: rows})
}

// webhookDead replays or purges a destination's dead letters (admins).
func (c *Console) webhookDead(replay bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, slug := r.Context(), tenantOf(r).Slug
		d, err := c.store.Destination(ctx, slug, chi.URLParam(r, "id"))
		if err != nil {
			c.fail(w, r, err)
			return
		}
		dl := c.deliveries()
		if dl == nil {
			c.errorPage(w, r, http.StatusServiceUnavailable, "Dead letters are kept by the data plane, which this console has none of.")
			return
		}
		done := "replayed"
		if replay {
			_, err = dl.ReplayDeadLetters(ctx, slug, d.ID)
		} else {
			_, err = dl.PurgeDeadLetters(ctx, slug, d.ID)
			done = "purged"
		}
		if err != nil {
			c.fail(w, r, err)
			return
		}
		redirect(w, r, "/tenants/"+slug+"/webhooks", done)
	}
}
