package events

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Writer stores events; *tenants.Store is one.
type Writer interface {
	AddEvents(ctx context.Context, es []Event) error
}

// RecorderConfig configures a Recorder.
type RecorderConfig struct {
	Writer Writer
	// Buffer is how many events may wait to be written before new ones
	// are dropped (and counted): 10,000 if zero.
	Buffer int
	// Batch is the most events one write carries: 100 if zero. (Into
	// SQLite, a row costs least in batches of about 100: some 25 µs of
	// CPU, against 110 µs alone and 35 µs in batches of 250.)
	Batch int
	// Rate is how many events a second one tenant may have stored from
	// this process, with a burst of ten times as many: 100 if zero. A
	// tenant past it (a flood of failed logins, a device reconnecting in a
	// loop) has its further events dropped and counted, so that it can
	// neither fill the database nor take the queue from other tenants.
	Rate int
	// Pause is the least time between the end of one write that was not
	// full and the start of the next: 50 ms if zero. An event that finds
	// the recorder idle is written at once; those that come while it
	// writes or pauses wait for the next write, and go in one batch (a
	// connect storm's events cost the database a statement per batch,
	// not per event).
	Pause time.Duration
	Log   *slog.Logger
	// Now is the clock; time.Now if nil.
	Now func() time.Time
}

// Recorder stores events in the control plane's database, off the path
// that raised them: Emit only queues, a goroutine writes what is queued in
// batches (pausing between writes, so that a storm of events is a few
// transactions rather than one per event), and when the queue is full
// (the database is slow or down) new events are dropped and counted
// rather than making a connection wait.
type Recorder struct {
	cfg   RecorderConfig
	queue chan Event
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once

	written, dropped, failed, limited atomic.Int64

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

// bucket is one tenant's allowance of stored events.
type bucket struct {
	tokens float64
	at     time.Time
}

// NewRecorder starts a recorder; Close stops it.
func NewRecorder(cfg RecorderConfig) *Recorder {
	if cfg.Buffer <= 0 {
		cfg.Buffer = 10_000
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 100
	}
	if cfg.Pause <= 0 {
		cfg.Pause = 50 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Recorder{cfg: cfg, queue: make(chan Event, cfg.Buffer), done: make(chan struct{}), buckets: map[string]*bucket{}}
	r.wg.Add(1)
	go r.run()
	return r
}

var _ Sink = (*Recorder)(nil)

// Emit queues an event to be stored; it never blocks.
func (r *Recorder) Emit(e Event) {
	if !r.allow(e.Tenant) {
		r.limited.Add(1)
		return
	}
	select {
	case r.queue <- e:
	default:
		r.dropped.Add(1)
	}
}

// Written, Dropped, Limited and Failed count events stored, dropped
// because the queue was full, dropped because their tenant was past its
// rate, and lost because the database refused their batch.
func (r *Recorder) Written() int64 { return r.written.Load() }
func (r *Recorder) Dropped() int64 { return r.dropped.Load() }
func (r *Recorder) Limited() int64 { return r.limited.Load() }
func (r *Recorder) Failed() int64  { return r.failed.Load() }

// allow takes one event from the tenant's allowance.
func (r *Recorder) allow(tenant string) bool {
	now := r.cfg.Now()
	rate := float64(r.cfg.Rate)
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.swept) > time.Minute {
		// Tenants idle for a while are full again: forget them.
		for t, b := range r.buckets {
			if now.Sub(b.at) > time.Minute {
				delete(r.buckets, t)
			}
		}
		r.swept = now
	}
	b := r.buckets[tenant]
	if b == nil {
		b = &bucket{tokens: 10 * rate, at: now}
		r.buckets[tenant] = b
	}
	b.tokens = min(10*rate, b.tokens+now.Sub(b.at).Seconds()*rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (r *Recorder) run() {
	defer r.wg.Done()
	batch := make([]Event, 0, r.cfg.Batch)
	pause := time.NewTimer(r.cfg.Pause)
	pause.Stop()
	for {
		select {
		case e := <-r.queue:
			batch = append(batch[:0], e)
		case <-r.done:
			// Write what is queued, then stop.
			for {
				batch = batch[:0]
				for len(batch) < cap(batch) {
					select {
					case e := <-r.queue:
						batch = append(batch, e)
						continue
					default:
					}
					break
				}
				if len(batch) == 0 {
					return
				}
				r.write(batch)
			}
		}
		// Whatever else is queued goes in the same write, and the pause
		// after it lets the events that follow gather for the next: under
		// load the batches grow, and a lone event is written at once.
	fill:
		for len(batch) < cap(batch) {
			select {
			case e := <-r.queue:
				batch = append(batch, e)
			default:
				break fill
			}
		}
		r.write(batch)
		if len(batch) == cap(batch) {
			continue // more may be queued: no pause while behind
		}
		pause.Reset(r.cfg.Pause)
		select {
		case <-pause.C:
		case <-r.done:
		}
	}
}

// write stores a batch, trying once more after a short pause: a batch the
// database refuses twice is counted and logged, not held (the queue
// behind it would fill and drop newer events instead).
func (r *Recorder) write(batch []Event) {
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := r.cfg.Writer.AddEvents(ctx, batch)
		cancel()
		if err == nil {
			r.written.Add(int64(len(batch)))
			return
		}
		if attempt == 1 {
			r.failed.Add(int64(len(batch)))
			r.cfg.Log.Warn("store events", "events", len(batch), "err", err)
			return
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-r.done:
		}
	}
}

// Close writes what is queued and stops; a second Close does nothing.
func (r *Recorder) Close() error {
	r.once.Do(func() {
		close(r.done)
		r.wg.Wait()
	})
	return nil
}

// Collector exposes the recorder's counts to Prometheus:
// roost_events_stored_total{outcome="written|dropped|limited|failed"}.
func (r *Recorder) Collector() prometheus.Collector { return recorderCollector{r} }

type recorderCollector struct{ r *Recorder }

var storedDesc = prometheus.NewDesc("roost_events_stored_total",
	"Lifecycle events stored for their tenant's history (written), dropped because the write queue was full (dropped) or their tenant was past its rate (limited), or refused by the database (failed).",
	[]string{"outcome"}, nil)

func (c recorderCollector) Describe(ch chan<- *prometheus.Desc) { ch <- storedDesc }

func (c recorderCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(storedDesc, prometheus.CounterValue, float64(c.r.Written()), "written")
	ch <- prometheus.MustNewConstMetric(storedDesc, prometheus.CounterValue, float64(c.r.Dropped()), "dropped")
	ch <- prometheus.MustNewConstMetric(storedDesc, prometheus.CounterValue, float64(c.r.Limited()), "limited")
	ch <- prometheus.MustNewConstMetric(storedDesc, prometheus.CounterValue, float64(c.r.Failed()), "failed")
}
