package web

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/tenants"
)

func (c *Console) livePage(w http.ResponseWriter, r *http.Request) {
	filter := r.URL.Query().Get("filter")
	if filter == "" {
		filter = "#"
	}
	c.render(w, r, http.StatusOK, "live.html", page{Title: "Live messages", Nav: "live", Form: map[string]string{"filter": filter}})
}

// liveMessage is one message as the live view's script receives it.
type liveMessage struct {
	Time     time.Time `json:"time"`
	Topic    string    `json:"topic"`
	Payload  string    `json:"payload"`
	Encoding string    `json:"encoding"` // utf-8 or base64
	QoS      byte      `json:"qos"`
	Retain   bool      `json:"retain"`
	// Sender is the publishing client's id; "inline" for the API's and
	// the console's publishes.
	Sender string `json:"sender"`
}

// liveBuffer is how many messages may wait for a slow browser before the
// newest are dropped (and counted).
const liveBuffer = 256

// liveStream sends the tenant's messages matching a filter as server-sent
// events until the browser goes away. The watch runs in the tenant's own
// broker, so it cannot see another tenant's messages.
func (c *Console) liveStream(w http.ResponseWriter, r *http.Request) {
	if c.cfg.DataPlane == nil {
		c.errorPage(w, r, http.StatusServiceUnavailable, "This process does not run the MQTT data plane.")
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	msgs := make(chan liveMessage, liveBuffer)
	var dropped atomic.Int64
	err := c.cfg.DataPlane.Watch(ctx, tenantOf(r).Slug, accountOf(r).ID, r.URL.Query().Get("filter"), func(m dataplane.Message) {
		lm := liveMessage{Time: c.cfg.Now().UTC(), Topic: m.Topic, QoS: m.QoS, Retain: m.Retain, Payload: string(m.Payload), Encoding: "utf-8", Sender: m.Sender}
		if !utf8.Valid(m.Payload) {
			lm.Payload, lm.Encoding = base64.StdEncoding.EncodeToString(m.Payload), "base64"
		}
		select {
		case msgs <- lm:
		default:
			dropped.Add(1)
		}
	})
	if err != nil {
		if errors.Is(err, tenants.ErrInvalid) {
			c.errorPage(w, r, http.StatusBadRequest, err.Error())
			return
		}
		c.fail(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	// A stream outlives the server's read and write timeouts: no read
	// deadline, and each write gets its own.
	rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(event string, v any) bool {
		b, _ := json.Marshal(v)
		rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send("ready", map[string]string{"filter": r.URL.Query().Get("filter")}) {
		return
	}
	heartbeat := time.NewTicker(15 * time.Second)
	defer heartbeat.Stop()
	reported := int64(0)
	checked := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-msgs:
			if time.Since(checked) >= liveRecheck {
				if !c.mayStillWatch(r) {
					return
				}
				checked = time.Now()
			}
			if !send("message", m) {
				return
			}
		case <-heartbeat.C:
			if !c.mayStillWatch(r) {
				return
			}
			checked = time.Now()
			if n := dropped.Load(); n != reported {
				reported = n
				if !send("dropped", map[string]int64{"dropped": n}) {
					return
				}
			} else if !send("ping", map[string]any{}) {
				return
			}
		}
	}
}

// liveRecheck is how long a live stream trusts the session and membership
// it was opened with before it checks them again, at its next message.
const liveRecheck = time.Second

// mayStillWatch reports whether the session that opened a live stream is
// still open and its account still a member of the tenant: logging out or
// being removed ends an open stream too.
func (c *Console) mayStillWatch(r *http.Request) bool {
	a, ok := c.account(r)
	if !ok || a.ID != accountOf(r).ID {
		return false
	}
	_, err := c.store.Membership(r.Context(), tenantOf(r).Slug, a.ID)
	return err == nil
}

// livePublish publishes a test message into the tenant (admins), from a
// form or from the live view's script.
func (c *Console) livePublish(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	m := dataplane.Message{Topic: strings.TrimSpace(r.PostFormValue("topic")), Payload: []byte(r.PostFormValue("payload")), Retain: r.PostFormValue("retain") == "on"}
	qos, err := strconv.Atoi(cmp.Or(r.PostFormValue("qos"), "0"))
	switch {
	case err != nil || qos < 0 || qos > 2:
		err = &tenants.FieldError{Field: "qos", Message: "must be 0, 1 or 2"}
	case c.cfg.DataPlane == nil:
		err = fmt.Errorf("this process does not run the MQTT data plane: %w", tenants.ErrUnavailable)
	default:
		m.QoS = byte(qos)
		err = c.cfg.DataPlane.Publish(r.Context(), t.Slug, m)
	}
	script := r.Header.Get("X-CSRF-Token") != ""
	if err != nil {
		// The status is the one the API's publish answers, from the one
		// table of error kinds; an error of no kind is logged, not shown.
		p := problem.Of(err)
		msg, errs := err.Error(), formErrors(err)
		if p.Internal() {
			msg = c.logInternal(r, err)
			errs = map[string]string{"_": msg}
		}
		if p.RetryAfter != "" {
			w.Header().Set("Retry-After", p.RetryAfter)
		}
		if script { // a short answer
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(p.Status)
			fmt.Fprint(w, msg)
			return
		}
		c.render(w, r, p.Status, "live.html", page{Title: "Live messages", Nav: "live", Errors: errs,
			Form: map[string]string{"filter": "#", "topic": m.Topic, "payload": string(m.Payload)}})
		return
	}
	if script {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	redirect(w, r, "/tenants/"+t.Slug+"/live", "published")
}
