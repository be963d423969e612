package web

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

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
	if res.Outcome != dataplane.CommandOffline {
		// Sent: audited as a command through the API is.
		// One that fails is logged: the command was sent all the same.
		if err := c.store.AuditCommand(context.WithoutCancel(r.Context()), t.Slug, d.Name, form["command_name"], res.ID); err != nil {
			c.log(r).Error("console: audit a command sent", "device", d.Name, "id", res.ID, "err", err)
		}
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
