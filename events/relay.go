package events

import (
	"context"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Relay hands the events that have a topic (Event.Topic) to a publisher,
// off the path of whoever raised them: billing's events, raised on the
// control plane, reach the data plane this way, where they are published
// on the tenant's $events topics and matched by its rules. Emit only
// queues; relayShards goroutines call the publisher, each for the tenants
// that hash to it (in order per tenant, and a tenant whose node does not
// answer holds up only its shard), each call bounded by a timeout and
// tried three times; a full queue or an event that failed its tries is
// dropped (it is stored all the same: the relay is a sink beside the
// Recorder) and counted.
type Relay struct {
	publish func(context.Context, Event) error
	log     *slog.Logger
	queues  []chan Event
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once

	relayed, dropped atomic.Int64
}

// relayTimeout bounds one call of the publisher; relayShards is how many
// goroutines call it, each with a queue of relayQueue events.
const (
	relayTimeout = 5 * time.Second
	relayShards  = 8
	relayQueue   = 128
)

// NewRelay starts a relay to publish; Close stops it.
func NewRelay(publish func(context.Context, Event) error, log *slog.Logger) *Relay {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Relay{publish: publish, log: log, done: make(chan struct{})}
	for range relayShards {
		q := make(chan Event, relayQueue)
		r.queues = append(r.queues, q)
		r.wg.Add(1)
		go r.run(q)
	}
	return r
}

var _ Sink = (*Relay)(nil)

// Emit queues an event with a topic; it never blocks.
func (r *Relay) Emit(e Event) {
	if !e.HasTopic() {
		return
	}
	select {
	case r.queues[shard(e.Tenant)] <- e:
	default:
		r.dropped.Add(1)
	}
}

// shard is the relay's goroutine (and queue) for a tenant's events.
func shard(tenant string) int {
	h := fnv.New32a()
	h.Write([]byte(tenant))
	return int(h.Sum32() % relayShards)
}

// Relayed and Dropped count the events published and those lost.
func (r *Relay) Relayed() int64 { return r.relayed.Load() }
func (r *Relay) Dropped() int64 { return r.dropped.Load() }

func (r *Relay) run(queue <-chan Event) {
	defer r.wg.Done()
	for {
		select {
		case <-r.done:
			return
		case e := <-queue:
			if err := r.try(e); err != nil {
				r.dropped.Add(1)
				r.log.Warn("publish an event in its tenant", "tenant", e.Tenant, "type", e.Type, "err", err)
				continue
			}
			r.relayed.Add(1)
		}
	}
}

// relayRetries are the pauses before the second and third tries of an
// event: the data plane may not have seen the change the event is about
// yet (billing_resumed reaching a node that still holds the tenant
// suspended), or its node may be restarting.
var relayRetries = []time.Duration{500 * time.Millisecond, 2 * time.Second}

// try publishes an event, trying again after each of relayRetries.
func (r *Relay) try(e Event) error {
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), relayTimeout)
		err := r.publish(ctx, e)
		cancel()
		if err == nil || i == len(relayRetries) {
			return err
		}
		select {
		case <-time.After(relayRetries[i]):
		case <-r.done:
			return err
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
