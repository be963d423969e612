package web

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

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
