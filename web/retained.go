package web

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// retainedData is the retained messages page: a filter and a page of
// the messages matching it.
type retainedData struct {
	Filter   string
	Messages []dataplane.Retained
	// Next is the offset of the next page; 0 at the end.
	Next      int
	Available bool
}

const retainedPerPage = 50

// retainedPage lists the tenant's retained messages matching ?filter=,
// a page at a time (?after= is the offset the previous page gave).
func (c *Console) retainedPage(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	q := r.URL.Query()
	filter := strings.TrimSpace(q.Get("filter"))
	d := retainedData{Filter: filter, Available: c.cfg.DataPlane != nil}
	if filter == "" {
		filter = "#"
	}
	status := http.StatusOK
	var errs map[string]string
	offset, err := strconv.Atoi(q.Get("after"))
	if q.Get("after") == "" {
		offset, err = 0, nil
	}
	switch {
	case err != nil || offset < 0:
		status, errs = http.StatusBadRequest, map[string]string{"cursor": "is not one this page gave"}
	case d.Available:
		msgs, next, err := c.cfg.DataPlane.Retained(r.Context(), t.Slug, filter, offset, retainedPerPage)
		switch {
		case err == nil:
			d.Messages, d.Next = msgs, next
		case errors.Is(err, tenants.ErrInvalid):
			status, errs = http.StatusBadRequest, formErrors(err)
		case r.Context().Err() != nil:
			return
		default:
			c.fail(w, r, err)
			return
		}
	}
	c.render(w, r, status, "retained.html", page{Title: "Retained messages", Nav: "retained", Data: d, Errors: errs})
}

// retainedDelete clears the message retained on the form's topic.
func (c *Console) retainedDelete(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	if c.cfg.DataPlane == nil {
		c.errorPage(w, r, http.StatusServiceUnavailable, "This process does not run the MQTT data plane.")
		return
	}
	topic := r.PostFormValue("topic")
	if err := c.cfg.DataPlane.DeleteRetained(r.Context(), t.Slug, topic); err != nil {
		c.fail(w, r, err)
		return
	}
	to := "/tenants/" + t.Slug + "/retained"
	if f := r.PostFormValue("filter"); f != "" {
		to += "?filter=" + url.QueryEscape(f) + "&done=retained-deleted"
		http.Redirect(w, r, to, http.StatusSeeOther)
		return
	}
	redirect(w, r, to, "retained-deleted")
}

// deviceQueuePurge drops every message queued for the device.
func (c *Console) deviceQueuePurge(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	d, err := c.store.Device(r.Context(), t.Slug, chi.URLParam(r, "device"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if c.cfg.DataPlane != nil {
		if _, err := c.cfg.DataPlane.PurgeQueue(r.Context(), t.Slug, d.Name); err != nil {
			c.fail(w, r, err)
			return
		}
	}
	redirect(w, r, devicePath(r), "queue-purged")
}

// deviceCommand sends a command from the device page and shows the
// device's reply (or why there is none) on it.
func (c *Console) deviceCommand(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	d, err := c.store.Device(r.Context(), t.Slug, chi.URLParam(r, "device"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	form := map[string]string{"command_name": r.PostFormValue("command_name"), "command_payload": r.PostFormValue("command_payload"),
		"command_timeout": r.PostFormValue("command_timeout")}
	fail := func(field, msg string) {
		c.renderDevice(w, r, http.StatusBadRequest, page{Form: form, Errors: map[string]string{field: msg}})
	}
	if c.cfg.DataPlane == nil {
		fail("command_name", "cannot be sent: this process does not run the MQTT data plane")
		return
	}
	timeout := dataplane.DefaultCommandTimeout
	if s := strings.TrimSpace(form["command_timeout"]); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > int(dataplane.MaxCommandTimeout.Seconds()) {
			fail("command_timeout", "must be a whole number of seconds from 1 to 60")
			return
		}
		timeout = time.Duration(n) * time.Second
	}
	res, err := c.cfg.DataPlane.Command(r.Context(), t.Slug, d.Name, dataplane.Command{Name: form["command_name"], Payload: []byte(form["command_payload"]), Timeout: timeout})
	var fe *tenants.FieldError
	switch {
	case errors.As(err, &fe) && (fe.Field == "name" || fe.Field == "timeout"):
		fail("command_"+fe.Field, fe.Message)
		return
	case err != nil:
		c.fail(w, r, err)
		return
	}
	p := page{Form: form}
	switch res.Outcome {
	case dataplane.CommandReplied:
		reply := string(res.Reply)
		if !utf8.Valid(res.Reply) {
			reply = "(base64) " + base64.StdEncoding.EncodeToString(res.Reply)
		}
		p.Flash = fmt.Sprintf("%s replied in %s: %s", d.Name, res.Took.Round(time.Millisecond), reply)
	case dataplane.CommandTimeout:
		p.Flash = fmt.Sprintf("%s did not reply within %s.", d.Name, timeout)
	default:
		p.Flash = d.Name + " is not connected: the command was not sent."
	}
	c.renderDevice(w, r, http.StatusOK, p)
}
