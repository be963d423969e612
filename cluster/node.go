// Package cluster makes data-plane nodes a fleet: each node announces
// itself in the database and serves a small internal API (live
// connections, queues, disconnects, publishes, watches, ending forwarded
// connections) behind the operator token; its Member places tenants, one
// home node each, so that every node forwards a tenant's devices to its
// home; a control plane's Remote sends its questions to the nodes seen
// lately, and publishes and watches to the tenant's home. A single `roost
// serve` needs none of it.
package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/tenants"
)

// Prefix starts every internal route.
const Prefix = "/internal/v1"

// Hub is what a node serves from; *broker.Hub satisfies it.
type Hub interface {
	dataplane.DataPlane
	CloseForwarded(origin string) int
}

var _ Hub = (*broker.Hub)(nil)

// deviceView is a device as one node sees it.
type deviceView struct {
	Connections []dataplane.Connection `json:"connections"`
	Queue       dataplane.QueueStats   `json:"queue"`
}

// tenantView is a tenant as one node sees it.
type tenantView struct {
	Connections  int              `json:"connections"`
	ExportErrors map[string]int64 `json:"export_errors"`
}

// failure is an error on the wire from a node to a control plane: the
// problem the one table of error kinds (internal/problem) makes of it, which
// the control plane turns back into an error of the same kind, so it answers
// as if the hub were in process. Kind is the problem's code; the names are
// those older nodes send, so a fleet can roll.
type failure struct {
	Kind       string `json:"kind"`
	Field      string `json:"field,omitempty"`
	Message    string `json:"message"`
	Quota      string `json:"quota,omitempty"`
	Limit      *int64 `json:"limit,omitempty"`
	RetryAfter string `json:"retry_after,omitempty"`
}

// toFailure is the status and the failure a node answers err with. An
// error of no known kind keeps its message: the caller is the operator's
// own control plane, which logs it.
func toFailure(err error) (int, failure) {
	p := problem.Of(err)
	if p.Internal() {
		p.Detail = err.Error()
	}
	return p.Status, failure{Kind: p.Code, Field: p.Field, Message: p.Detail, Quota: p.Quota, Limit: p.Limit, RetryAfter: p.RetryAfter}
}

// err rebuilds the node's error. A failure of no kind (a body that was no
// failure: a proxy's page, a refused token) means the node could not be
// used; one of a kind the table does not hold is the node's internal error.
func (f failure) err(node string) error {
	switch f.Kind {
	case "":
		return fmt.Errorf("data-plane node %s: %s: %w", node, f.Message, tenants.ErrUnavailable)
	case "quota": // what older nodes call quota_exceeded
		f.Kind = "quota_exceeded"
	}
	if problem.Kind(f.Kind) == nil {
		return fmt.Errorf("data-plane node %s: %s", node, f.Message)
	}
	p := problem.Problem{Code: f.Kind, Field: f.Field, Detail: f.Message, Quota: f.Quota, Limit: f.Limit, RetryAfter: f.RetryAfter}
	return p.Err()
}

// readFailure decodes a node's answer that was not a success.
func readFailure(resp *http.Response, node string) error {
	var f failure
	if err := json.NewDecoder(resp.Body).Decode(&f); err != nil {
		f = failure{Message: resp.Status}
	}
	return f.err(node)
}

// eventPublisher publishes an event raised elsewhere in its tenant;
// *broker.Hub is one.
type eventPublisher interface {
	PublishEvent(ctx context.Context, e events.Event) error
}

// EventLog holds a node's recent events per tenant; *events.Memory is one.
type EventLog interface {
	Recent(tenant string) []events.Event
}

// Serve returns a node's internal API, for callers with the operator token,
// with an operator check of its own (see ServeWith).
func Serve(hub Hub, recent EventLog, token string, log *slog.Logger) http.Handler {
	return ServeWith(hub, recent, auth.NewOperator(token, nil, log), log)
}

// watchBuffer and watchBufferBytes (of topics and payloads) bound what a
// node's watch holds for a control plane that reads slower than the
// tenant publishes: past either, messages are dropped (a watch is a live
// view, at most once).
const (
	watchBuffer      = 1024 // as many as an app's stream holds (api.streamBuffer)
	watchBufferBytes = 8 << 20
)

// ServeWith returns a node's internal API, for callers with the operator
// token; op checks it, so a process shares one count of wrong tokens per
// address with its /metrics (the right token always passes).
func ServeWith(hub Hub, recent EventLog, op *auth.Operator, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET "+Prefix+"/tenants/{tenant}", func(w http.ResponseWriter, r *http.Request) {
		t := r.PathValue("tenant")
		writeJSON(w, http.StatusOK, tenantView{Connections: hub.ConnectionCount(t), ExportErrors: hub.ExportErrors(t)})
	})
	mux.HandleFunc("GET "+Prefix+"/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, hub.Stats())
	})
	mux.HandleFunc("GET "+Prefix+"/tenants/{tenant}/devices/{device}", func(w http.ResponseWriter, r *http.Request) {
		t, d := r.PathValue("tenant"), r.PathValue("device")
		writeJSON(w, http.StatusOK, deviceView{Connections: hub.Connections(t, d), Queue: hub.Queue(t, d)})
	})
	mux.HandleFunc("GET "+Prefix+"/tenants/{tenant}/events", func(w http.ResponseWriter, r *http.Request) {
		evs := []events.Event{}
		if recent != nil {
			evs = append(evs, recent.Recent(r.PathValue("tenant"))...)
		}
		writeJSON(w, http.StatusOK, evs)
	})
	// An event raised on a control plane running apart (billing's), for
	// the tenant's rules and $events topics (broker.Hub.PublishEvent).
	mux.HandleFunc("POST "+Prefix+"/tenants/{tenant}/events", func(w http.ResponseWriter, r *http.Request) {
		p, ok := hub.(eventPublisher)
		if !ok {
			status, f := toFailure(fmt.Errorf("this node publishes no events: %w", tenants.ErrUnavailable))
			writeJSON(w, status, f)
			return
		}
		var e events.Event
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&e); err != nil {
			status, f := toFailure(&tenants.FieldError{Field: "body", Message: err.Error()})
			writeJSON(w, status, f)
			return
		}
		e.Tenant = r.PathValue("tenant") // the path's, whatever the body says
		if err := p.PublishEvent(r.Context(), e); err != nil {
			status, f := toFailure(err)
			writeJSON(w, status, f)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST "+Prefix+"/tenants/{tenant}/devices/{device}/disconnect", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]int{"closed": hub.Disconnect(r.PathValue("tenant"), r.PathValue("device"))})
	})
	mux.HandleFunc("POST "+Prefix+"/tenants/{tenant}/messages", func(w http.ResponseWriter, r *http.Request) {
		var m dataplane.Message
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&m); err != nil {
			status, f := toFailure(&tenants.FieldError{Field: "body", Message: err.Error()})
			writeJSON(w, status, f)
			return
		}
		if err := hub.Publish(r.Context(), r.PathValue("tenant"), m); err != nil {
			status, f := toFailure(err)
			writeJSON(w, status, f)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	// The delivery of rules with a destination (see dataplane.Deliveries),
	// answered by the tenant's home node, which holds its outboxes.
	deliveries := func(w http.ResponseWriter) (dataplane.Deliveries, bool) {
		dl, ok := hub.(dataplane.Deliveries)
		if !ok {
			status, f := toFailure(fmt.Errorf("this node keeps no outboxes: %w", tenants.ErrUnavailable))
			writeJSON(w, status, f)
		}
		return dl, ok
	}
	answer := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			status, f := toFailure(err)
			writeJSON(w, status, f)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
	mux.HandleFunc("GET "+Prefix+"/tenants/{tenant}/destinations/{id}/status", func(w http.ResponseWriter, r *http.Request) {
		if dl, ok := deliveries(w); ok {
			st, err := dl.DeliveryStatus(r.Context(), r.PathValue("tenant"), r.PathValue("id"))
			answer(w, st, err)
		}
	})
	mux.HandleFunc("GET "+Prefix+"/tenants/{tenant}/destinations/{id}/dead-letters", func(w http.ResponseWriter, r *http.Request) {
		dl, ok := deliveries(w)
		if !ok {
			return
		}
		after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		items, more, err := dl.DeadLetters(r.Context(), r.PathValue("tenant"), r.PathValue("id"), after, min(max(limit, 1), 1000))
		if items == nil {
			items = []dataplane.DeadLetter{}
		}
		if more {
			w.Header().Set(deadLettersMoreHeader, "true")
		}
		answer(w, items, err)
	})
	mux.HandleFunc("POST "+Prefix+"/tenants/{tenant}/destinations/{id}/dead-letters/{op}", func(w http.ResponseWriter, r *http.Request) {
		dl, ok := deliveries(w)
		if !ok {
			return
		}
		var n int
		var err error
		switch r.PathValue("op") {
		case "replay":
			n, err = dl.ReplayDeadLetters(r.Context(), r.PathValue("tenant"), r.PathValue("id"))
		case "purge":
			n, err = dl.PurgeDeadLetters(r.Context(), r.PathValue("tenant"), r.PathValue("id"))
		default:
			http.NotFound(w, r)
			return
		}
		answer(w, map[string]int{"moved": n}, err)
	})
	// Commands, retained messages and sessions (dataplane.DataPlane):
	// a command waits here for its reply, up to its timeout.
	mux.HandleFunc("POST "+Prefix+"/tenants/{tenant}/devices/{device}/commands", func(w http.ResponseWriter, r *http.Request) {
		var c dataplane.Command
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&c); err != nil {
			answer(w, nil, &tenants.FieldError{Field: "body", Message: err.Error()})
			return
		}
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(dataplane.MaxCommandTimeout + 10*time.Second))
		res, err := hub.Command(r.Context(), r.PathValue("tenant"), r.PathValue("device"), c)
		answer(w, res, err)
	})
	mux.HandleFunc("GET "+Prefix+"/tenants/{tenant}/retained", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		offset, _ := strconv.Atoi(q.Get("offset"))
		limit, _ := strconv.Atoi(q.Get("limit"))
		items, next, err := hub.Retained(r.Context(), r.PathValue("tenant"), q.Get("filter"), max(offset, 0), min(max(limit, 1), 1000))
		if items == nil {
			items = []dataplane.Retained{}
		}
		answer(w, struct {
			Items []dataplane.Retained `json:"items"`
			Next  int                  `json:"next"`
		}{items, next}, err)
	})
	mux.HandleFunc("GET "+Prefix+"/tenants/{tenant}/retained/message", func(w http.ResponseWriter, r *http.Request) {
		m, err := hub.RetainedMessage(r.Context(), r.PathValue("tenant"), r.URL.Query().Get("topic"))
		answer(w, m, err)
	})
	mux.HandleFunc("POST "+Prefix+"/tenants/{tenant}/retained/delete", func(w http.ResponseWriter, r *http.Request) {
		err := hub.DeleteRetained(r.Context(), r.PathValue("tenant"), r.URL.Query().Get("topic"))
		answer(w, map[string]bool{"deleted": true}, err)
	})
	mux.HandleFunc("GET "+Prefix+"/tenants/{tenant}/devices/{device}/session", func(w http.ResponseWriter, r *http.Request) {
		s, err := hub.Session(r.Context(), r.PathValue("tenant"), r.PathValue("device"))
		answer(w, s, err)
	})
	mux.HandleFunc("POST "+Prefix+"/tenants/{tenant}/devices/{device}/session/purge", func(w http.ResponseWriter, r *http.Request) {
		n, err := hub.PurgeQueue(r.Context(), r.PathValue("tenant"), r.PathValue("device"))
		answer(w, map[string]int{"purged": n}, err)
	})
	mux.HandleFunc("POST "+Prefix+"/forwarded/{origin}/close", func(w http.ResponseWriter, r *http.Request) {
		origin := r.PathValue("origin")
		n := hub.CloseForwarded(origin)
		log.Info("ended the connections a draining node forwarded here", "origin", origin, "closed", n)
		writeJSON(w, http.StatusOK, map[string]int{"closed": n})
	})
	mux.HandleFunc("GET "+Prefix+"/tenants/{tenant}/watch", func(w http.ResponseWriter, r *http.Request) {
		msgs := make(chan dataplane.Message, watchBuffer)
		var buffered atomic.Int64 // bytes of topic and payload in msgs
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		if err := hub.Watch(ctx, r.PathValue("tenant"), r.URL.Query().Get("watcher"), r.URL.Query().Get("filter"), func(m dataplane.Message) {
			// A slow control plane loses messages, not the publisher's
			// time, nor the node's memory: counted in messages only, the
			// buffer held 256 of a plan's largest (8 MiB) for each watch.
			n := int64(len(m.Topic) + len(m.Payload))
			if buffered.Add(n) > watchBufferBytes {
				buffered.Add(-n)
				return
			}
			select {
			case msgs <- m:
			default:
				buffered.Add(-n)
			}
		}); err != nil {
			status, f := toFailure(err)
			writeJSON(w, status, f)
			return
		}
		rc := http.NewResponseController(w)
		rc.SetReadDeadline(time.Time{})
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		rc.Flush()
		enc := json.NewEncoder(w)
		ping := time.NewTicker(15 * time.Second)
		defer ping.Stop()
		for {
			var v any
			select {
			case <-ctx.Done():
				return
			case m := <-msgs:
				buffered.Add(-int64(len(m.Topic) + len(m.Payload)))
				v = m
			case <-ping.C:
				v = dataplane.Message{} // keeps the stream (and its proxies) awake
			}
			rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if enc.Encode(v) != nil || rc.Flush() != nil {
				return
			}
		}
	})
	return op.Require(mux)
}
