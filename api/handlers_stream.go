package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// streamStore is what an app stream reads: the tenant's quotas and its
// stored events.
type streamStore interface {
	Tenant(ctx context.Context, slug string) (tenants.Tenant, error)
	EventsAfter(ctx context.Context, tenant string, after int64, q tenants.EventQuery, limit int) ([]events.Event, error)
	LastEventID(ctx context.Context, tenant string) (int64, error)
}

// streamBuffer is how many messages, and streamBufferBytes how many bytes
// of topic and payload, may wait for a stream's reader; a reader that lets
// more pile up is too slow and its stream ends. (Payloads alone, 1,024
// topics of 64 KiB made 64 MiB.)
const (
	streamBuffer      = 1024
	streamBufferBytes = 8 << 20
)

// streamWriteTimeout bounds each write to a stream: a reader that does
// not take the bytes in that time is dropped.
const streamWriteTimeout = 10 * time.Second

// streams counts each tenant's open app streams against its max_streams
// quota, and each principal's (an API key, a person, the operator) among
// them, so that one key cannot take every place. The count is kept in the
// directory (tenants.Store.AcquireStream), so that it holds across every
// control-plane process of a fleet: each stream is a lease that the
// process serving it renews every third of the lease while it runs and
// releases when it ends, and a process that dies leaves leases that stop
// counting when they expire.
type streams struct {
	poll, heartbeat, lease time.Duration
	store                  streamLeases
}

// streamLeases is where streams are counted; *tenants.Store is one.
type streamLeases interface {
	AcquireStream(ctx context.Context, tenant, principal string, limit, each int64, ttl time.Duration) (tenants.StreamLease, error)
	RenewStream(ctx context.Context, l tenants.StreamLease, ttl time.Duration) error
	ReleaseStream(ctx context.Context, l tenants.StreamLease) error
}

// DefaultStreamLease is how long an app stream counts against its
// tenant after its process last renewed it.
const DefaultStreamLease = 30 * time.Second

func newStreams(store streamLeases, poll, heartbeat, lease time.Duration) *streams {
	if poll <= 0 {
		poll = time.Second
	}
	if heartbeat <= 0 {
		heartbeat = 15 * time.Second
	}
	if lease <= 0 {
		lease = DefaultStreamLease
	}
	return &streams{poll: poll, heartbeat: heartbeat, lease: lease, store: store}
}

// streamsEach is how many of a tenant's limit streams one principal may
// hold: half, rounded up, so that a flood from one API key leaves the
// other half to the tenant's other keys and people.
func streamsEach(limit int64) int64 {
	return max(1, (limit+1)/2)
}

// acquire counts a stream of the tenant's principal in, or refuses it over
// the tenant's limit or the principal's share of it. Until release, a
// goroutine renews the lease every third of it, apart from the stream's
// writes (each of which may wait streamWriteTimeout for a slow reader, and
// a stream sending a backlog makes many): the stream stays counted however
// long it runs. lost is closed if the lease expired nonetheless (the
// directory was out of reach for a whole lease), others possibly counted
// in its place: the stream is to end.
func (s *streams) acquire(ctx context.Context, tenant, principal string, limit int64, log *slog.Logger) (lost <-chan struct{}, release func(), err error) {
	l, err := s.store.AcquireStream(ctx, tenant, principal, limit, streamsEach(limit), s.lease)
	if err != nil {
		return nil, nil, err
	}
	lostc := make(chan struct{})
	renewing, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tk := time.NewTicker(s.lease / 3)
		defer tk.Stop()
		for {
			select {
			case <-renewing.Done():
				return
			case <-tk.C:
			}
			ctx, cancel := context.WithTimeout(renewing, s.lease/3)
			err := s.store.RenewStream(ctx, l, s.lease)
			cancel()
			switch {
			case errors.Is(err, tenants.ErrStreamLost):
				close(lostc)
				return
			case err != nil && renewing.Err() == nil:
				log.Warn("stream: renew its lease", "err", err) // tried again at the next tick
			}
		}
	})
	release = func() {
		stop()
		wg.Wait()
		// The request's context has ended: the release has its own.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.store.ReleaseStream(ctx, l) // failing, the lease expires
	}
	return lostc, release, nil
}

// streamMessage is a message as a stream sends it.
type streamMessage struct {
	Time     time.Time `json:"time"`
	Topic    string    `json:"topic"`
	Payload  string    `json:"payload"`
	Encoding string    `json:"encoding"` // utf-8 or base64
	QoS      byte      `json:"qos"`
	Retain   bool      `json:"retain"`
}

// size is what a message waiting for its stream's reader counts against
// streamBufferBytes.
func (m streamMessage) size() int64 { return int64(len(m.Topic) + len(m.Payload)) }

// handleStream streams the tenant's messages matching filter and, with
// events=1, its events, as server-sent events, until the reader goes, the
// caller loses access, the reader falls behind or the server drains.
// Messages come from a watch inside the tenant's broker, as a subscriber
// of the tenant with its own filter would get them (the retained ones
// that fit the buffer, then the live ones at most once); events come from
// the store, in order, each with its id, so
// that a stream resumed with Last-Event-ID misses none still kept.
func (s *Server) handleStream(st streamStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		slug := chi.URLParam(r, "tenant")
		v := r.URL.Query()
		filter := v.Get("filter")
		withEvents := false
		switch v.Get("events") {
		case "", "0", "false":
		case "1", "true":
			withEvents = true
		default:
			return &httpError{status: http.StatusBadRequest, code: "invalid", field: "events", msg: "events must be 1 or 0"}
		}
		if filter == "" && !withEvents {
			return &httpError{status: http.StatusBadRequest, code: "invalid", field: "filter", msg: "give a topic filter, events=1, or both"}
		}
		eq := tenants.EventQuery{Type: v.Get("type"), Device: v.Get("device")}
		if err := eq.Validate(); err != nil {
			return err
		}
		after := int64(-1)
		if id := r.Header.Get("Last-Event-ID"); id != "" && withEvents {
			n, err := strconv.ParseInt(id, 10, 64)
			if err != nil || n < 0 {
				return &httpError{status: http.StatusBadRequest, code: "invalid", field: "Last-Event-ID", msg: "Last-Event-ID must be the id of an event this stream sent"}
			}
			after = n
		}
		t, err := st.Tenant(r.Context(), slug)
		if err != nil {
			return err
		}
		log := s.log.With("tenant", slug)
		lost, release, err := s.streams.acquire(r.Context(), slug, streamWatcher(principalFrom(r.Context())), t.Quotas().MaxStreams, log)
		if errors.Is(err, tenants.ErrQuotaExceeded) {
			s.tooManyStreams(w, r, err)
			return nil
		}
		if err != nil {
			return err
		}
		defer release()

		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		msgs := make(chan streamMessage, streamBuffer)
		overflow := make(chan struct{})
		var overflowOnce sync.Once
		var buffered atomic.Int64 // bytes of topic and payload in msgs
		// watching is set once Watch has returned. Before, the watch
		// hands over the retained messages matching the filter, at once
		// and before anything can be read: those past the buffer are
		// passed over rather than taken for a reader falling behind (a
		// device could otherwise keep every stream of its tenant shut
		// by publishing retained messages).
		var watching atomic.Bool
		if filter != "" {
			if s.dataPlane == nil {
				return fmt.Errorf("this process does not run the MQTT data plane: %w", tenants.ErrUnavailable)
			}
			err := s.dataPlane.Watch(ctx, slug, streamWatcher(principalFrom(r.Context())), filter, func(m dataplane.Message) {
				sm := streamMessage{Time: s.now().UTC(), Topic: m.Topic, QoS: m.QoS, Retain: m.Retain, Payload: string(m.Payload), Encoding: "utf-8"}
				if !utf8.Valid(m.Payload) {
					sm.Payload, sm.Encoding = base64.StdEncoding.EncodeToString(m.Payload), "base64"
				}
				// Called from the broker's delivery: never wait here.
				n := sm.size()
				if buffered.Add(n) <= streamBufferBytes {
					select {
					case msgs <- sm:
						return
					default:
					}
				}
				if !watching.Load() {
					buffered.Add(-n)
					return
				}
				overflowOnce.Do(func() { close(overflow) })
			})
			watching.Store(true)
			if errors.Is(err, tenants.ErrQuotaExceeded) { // live_views: the broker's bound on watches
				s.tooManyStreams(w, r, err)
				return nil
			}
			if err != nil {
				return err
			}
		}
		if withEvents && after < 0 {
			if after, err = st.LastEventID(ctx, slug); err != nil {
				return err
			}
		}

		rc := http.NewResponseController(w)
		rc.SetReadDeadline(time.Time{})
		// A reader that lets the buffer fill is dropped at once: a write
		// blocked on it fails now rather than at its deadline. Only while
		// this handler runs: the connection may serve another request
		// after.
		var runMu sync.Mutex
		running, dropped := true, false
		defer func() { runMu.Lock(); running = false; runMu.Unlock() }()
		go func() {
			select {
			case <-overflow:
				runMu.Lock()
				if running {
					s.log.Info("stream: reader too slow, dropped", "tenant", slug, "buffer", streamBuffer)
					dropped = true
					rc.SetWriteDeadline(time.Now())
				}
				runMu.Unlock()
			case <-ctx.Done():
			}
		}()
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		write := func(b []byte) bool {
			runMu.Lock()
			if dropped {
				runMu.Unlock()
				return false
			}
			rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
			runMu.Unlock()
			if _, err := w.Write(b); err != nil {
				return false
			}
			return rc.Flush() == nil
		}
		send := func(id, event string, v any) bool {
			b, _ := json.Marshal(v)
			var sb strings.Builder
			if id != "" {
				sb.WriteString("id: " + id + "\n")
			}
			fmt.Fprintf(&sb, "event: %s\ndata: %s\n\n", event, b)
			return write([]byte(sb.String()))
		}
		// The retry field tells EventSource clients how long to wait
		// before reconnecting.
		if !write([]byte("retry: 2000\n\n")) || !send("", "ready", map[string]any{"filter": filter, "events": withEvents}) {
			return nil
		}
		heartbeat := time.NewTicker(s.streams.heartbeat)
		defer heartbeat.Stop()
		// Counted out (see acquire): the client connects again, resuming
		// with Last-Event-ID, within max_streams.
		endLost := func() { send("", "end", map[string]string{"reason": "stream lease lost"}) }
		beat := func() bool {
			// Revoked keys, ended sessions and removed members lose
			// their open streams too.
			if !s.mayStillRead(r, slug) {
				send("", "end", map[string]string{"reason": "access ended"})
				return false
			}
			return write([]byte(": ping\n\n"))
		}
		sendEvents := func() bool {
			for {
				es, err := st.EventsAfter(ctx, slug, after, eq, tenants.MaxPageSize)
				if err != nil {
					if ctx.Err() == nil {
						log.Warn("stream: read events", "err", err)
					}
					return ctx.Err() == nil // try again at the next poll
				}
				for _, e := range es {
					if !send(strconv.FormatInt(e.ID, 10), "event", e) {
						return false
					}
					after = e.ID
					// A backlog (a stream resumed far back, read slowly)
					// may take long: its access is checked, and its
					// lease heeded, while it is sent.
					select {
					case <-lost:
						endLost()
						return false
					case <-heartbeat.C:
						if !beat() {
							return false
						}
					default:
					}
				}
				if len(es) < tenants.MaxPageSize {
					return true
				}
			}
		}
		var poll <-chan time.Time
		if withEvents {
			if !sendEvents() {
				return nil
			}
			tk := time.NewTicker(s.streams.poll)
			defer tk.Stop()
			poll = tk.C
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-overflow:
				return nil
			case m := <-msgs:
				buffered.Add(-m.size())
				if !send("", "message", m) {
					return nil
				}
			case <-poll:
				if !sendEvents() {
					return nil
				}
			case <-lost:
				endLost()
				return nil
			case <-heartbeat.C:
				if !beat() {
					return nil
				}
			}
		}
	}
}

// streamWatcher names who watches, for the data plane's per-watcher bound.
func streamWatcher(p principal) string {
	switch {
	case p.key != nil:
		return "key:" + p.key.ID
	case p.account != nil:
		return p.account.ID
	}
	return "operator"
}

// mayStillRead reports whether the request's token still reads the tenant.
func (s *Server) mayStillRead(r *http.Request, slug string) bool {
	p, err := s.principal(r)
	switch {
	case err != nil:
		return false
	case p.operator: // the operator token reads every tenant
		return true
	case p.key != nil:
		return p.key.Tenant == slug && p.key.Role.AtLeast(tenants.RoleViewer)
	case p.account != nil:
		m, err := s.store.Membership(r.Context(), slug, p.account.ID)
		if err != nil && !errors.Is(err, tenants.ErrNotFound) {
			return true // the directory hiccupped: judge at the next beat
		}
		return err == nil && m.Role.AtLeast(tenants.RoleViewer)
	}
	return false
}

// tooManyStreams answers 429 for a bound on open streams: unlike a limit
// on what a tenant holds, it lifts as soon as one of its streams closes.
func (s *Server) tooManyStreams(w http.ResponseWriter, r *http.Request, err error) {
	p := toProblem(err, requestID(r.Context()), s.log)
	p.Status, p.Title, p.retryAfter = http.StatusTooManyRequests, http.StatusText(http.StatusTooManyRequests), "5"
	writeProblem(w, p)
}
