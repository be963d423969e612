package web

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// webhookData is one destination's page: what it is, how its delivery
// goes, the rules sending to it, and (admins) the form that changes it.
type webhookData struct {
	Row   webhookRow
	Rules []tenants.ExportRule
	// Secret is a signing secret just made by a rotation, shown once.
	Secret string
}

// webhookPage shows one destination. The edit form is filled from the
// destination, less what is sealed: header values and a Kafka password are
// never shown again, only the header names.
func (c *Console) webhookPage(w http.ResponseWriter, r *http.Request) {
	d, err := c.store.Destination(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "id"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.renderWebhook(w, r, http.StatusOK, d, page{Form: destinationValues(d)}, webhookData{})
}

// destinationValues fills the edit form from a destination.
func destinationValues(d tenants.Destination) map[string]string {
	form := map[string]string{"name": d.Name, "url": d.URL}
	if k := d.Kafka; k != nil {
		form["brokers"], form["topic"], form["ca"], form["server_name"] = strings.Join(k.Brokers, ", "), k.Topic, k.CA, k.ServerName
		if k.TLS {
			form["tls"] = "on"
		}
		if k.SASL != nil {
			form["mechanism"], form["username"] = k.SASL.Mechanism, k.SASL.Username
		}
	}
	return form
}

func (c *Console) renderWebhook(w http.ResponseWriter, r *http.Request, status int, d tenants.Destination, p page, data webhookData) {
	ctx, slug := r.Context(), tenantOf(r).Slug
	rules, err := c.store.Rules(ctx, slug)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	data.Row = webhookRow{Destination: d, Host: where(d)}
	for _, rule := range rules {
		if rule.Destination == d.ID {
			data.Rules = append(data.Rules, rule)
		}
	}
	data.Row.Rules = len(data.Rules)
	if data.Row.Status, err = c.deliveryStatus(ctx, slug, d.ID); err != nil {
		c.internal(w, r, err)
		return
	}
	p.Title, p.Nav, p.Data = "Destination "+d.Name, "webhooks", data
	c.render(w, r, status, "webhook.html", p)
}

// headersField reads a headers field, one "Name: value" a line; blank
// lines are skipped. The names and values are checked by the store.
func headersField(v string) (map[string]string, error) {
	h := map[string]string{}
	for i, line := range strings.Split(v, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) == "" {
			return nil, &tenants.FieldError{Field: "headers", Message: "line " + strconv.Itoa(i+1) + " is not Name: value"}
		}
		name = http.CanonicalHeaderKey(strings.TrimSpace(name))
		if _, dup := h[name]; dup {
			return nil, &tenants.FieldError{Field: "headers", Message: name + " is given twice"}
		}
		h[name] = strings.TrimSpace(value)
	}
	return h, nil
}

// webhookUpdate changes a destination (admins): its name; a webhook's URL
// and headers (new ones replace them all; "clear_headers" removes them;
// neither keeps them, unless the URL goes to another origin, where the
// store wants them again); a Kafka destination's cluster, topic, TLS and
// SASL (an empty password keeps the one set before, unless where it
// would go changes). A URL or brokers that change are checked against
// the hub's address policy as at creation.
// Mistakes come back on the page, by field; header values and the
// password are not shown again.
func (c *Console) webhookUpdate(w http.ResponseWriter, r *http.Request) {
	ctx, slug, id := r.Context(), tenantOf(r).Slug, chi.URLParam(r, "id")
	d, err := c.store.Destination(ctx, slug, id)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	in, form := destinationForm(r)
	form["clear_headers"] = r.PostFormValue("clear_headers")
	again := func(status int, errs map[string]string) {
		c.renderWebhook(w, r, status, d, page{Form: form, Errors: errs}, webhookData{})
	}
	up := tenants.DestinationUpdate{Name: &in.Name}
	guard := c.out.sender.Guard()
	if d.Type == tenants.DestinationKafka {
		k := kafkaForm(r, form) // the destination's type, not the form's
		if err := k.Validate(false); err != nil {
			again(http.StatusBadRequest, formErrors(err))
			return
		}
		// Only brokers that change: the form sends them all, and a rename
		// must not fail on a policy tightened since they were set (the
		// API's PATCH checks the brokers it is given).
		if d.Kafka == nil || !slices.Equal(k.Brokers, d.Kafka.Brokers) || k.TLS != d.Kafka.TLS {
			if err := guard.CheckKafka(ctx, k.Brokers, k.TLS); err != nil {
				again(http.StatusBadRequest, map[string]string{"kafka.brokers": err.Error()})
				return
			}
		}
		if k.SASL != nil && k.SASL.Password != "" {
			up.SealedPassword = c.out.sealer.SealPassword(slug, id, k.SASL.Password)
		}
		up.Kafka = k
	} else {
		if in.URL != d.URL { // only a URL that changes, as for brokers
			if err := guard.CheckURL(in.URL); err != nil {
				again(http.StatusBadRequest, map[string]string{"url": err.Error()})
				return
			}
		}
		up.URL = &in.URL
		h, err := headersField(r.PostFormValue("headers"))
		if err != nil {
			again(http.StatusBadRequest, formErrors(err))
			return
		}
		if len(h) > 0 && form["clear_headers"] != "" {
			again(http.StatusBadRequest, map[string]string{"headers": "give new headers or remove them all, not both"})
			return
		}
		if len(h) > 0 || form["clear_headers"] != "" {
			up.Headers = &h
		}
	}
	_, err = c.store.UpdateDestination(ctx, slug, id, up, func(h map[string]string) string { return c.out.sealer.SealHeaders(slug, id, h) })
	switch {
	case errors.Is(err, tenants.ErrConflict):
		again(http.StatusBadRequest, map[string]string{"name": "a destination of that name exists"})
	case errors.Is(err, tenants.ErrInvalid):
		again(http.StatusBadRequest, formErrors(err))
	case err != nil:
		c.fail(w, r, err)
	default:
		redirect(w, r, "/tenants/"+slug+"/webhooks/"+id, "saved")
	}
}

// webhookRotate gives a webhook a new signing secret (admins), shown once
// on the answer; the old one signs nothing from then on.
func (c *Console) webhookRotate(w http.ResponseWriter, r *http.Request) {
	ctx, slug, id := r.Context(), tenantOf(r).Slug, chi.URLParam(r, "id")
	d, err := c.store.Destination(ctx, slug, id)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if d.Type != tenants.DestinationWebhook {
		c.renderWebhook(w, r, http.StatusConflict, d, page{Form: destinationValues(d), Errors: map[string]string{"_": "A Kafka destination has no signing secret: set its password in the form instead."}}, webhookData{})
		return
	}
	secret := dataout.NewSecret()
	if d, err = c.store.RotateDestinationSecret(ctx, slug, id, c.out.sealer.SealSecret(slug, id, secret)); err != nil {
		c.fail(w, r, err)
		return
	}
	c.renderWebhook(w, r, http.StatusOK, d, page{Form: destinationValues(d), Flash: "A new signing secret: the old one signs nothing from now on."}, webhookData{Secret: secret})
}
