package events

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Relay hands the events that have a topic (Event.Topic) to a publisher,
// off the path of whoever raised them: billing's events, raised on the
// control plane, reach the data plane this way, where they are published
// on the tenant's $events topics and matched by its rules. Emit only
// queues; one goroutine calls the publisher, each call bounded by a
// timeout; a full queue or a failed call drops the event (it is stored
// all the same: the relay is a sink beside the Recorder) and counts it.
type Relay struct {
	publish func(context.Context, Event) error
	log     *slog.Logger
	queue   chan Event
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once

	relayed, dropped atomic.Int64
}

// relayTimeout bounds one call of the publisher.
const relayTimeout = 10 * time.Second

// NewRelay starts a relay to publish, with a queue of 1,000 events;
// Close stops it.
func NewRelay(publish func(context.Context, Event) error, log *slog.Logger) *Relay {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Relay{publish: publish, log: log, queue: make(chan Event, 1000), done: make(chan struct{})}
	r.wg.Add(1)
	go r.run()
	return r
}

var _ Sink = (*Relay)(nil)

// Emit queues an event with a topic; it never blocks.
func (r *Relay) Emit(e Event) {
	if e.Topic() == "" {
		return
	}
	select {
	case r.queue <- e:
	default:
		r.dropped.Add(1)
	}
}

// Relayed and Dropped count the events published and those lost.
func (r *Relay) Relayed() int64 { return r.relayed.Load() }
func (r *Relay) Dropped() int64 { return r.dropped.Load() }

func (r *Relay) run() {
	defer r.wg.Done()
	for {
		select {
		case <-r.done:
			return
		case e := <-r.queue:
			ctx, cancel := context.WithTimeout(context.Background(), relayTimeout)
			err := r.publish(ctx, e)
			cancel()
			if err != nil {
				r.dropped.Add(1)
				r.log.Warn("publish an event in its tenant", "tenant", e.Tenant, "type", e.Type, "err", err)
				continue
			}
			r.relayed.Add(1)
		}
	}
}

// Close stops the relay; events still queued are dropped. A second Close
// does nothing.
func (r *Relay) Close() error {
	r.once.Do(func() {
		close(r.done)
		r.wg.Wait()
	})
	return nil
}
