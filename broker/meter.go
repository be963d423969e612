package broker

import (
	"context"
	"errors"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/tenants"
)

// UsageStore records metered usage; tenants.Store is one.
type UsageStore interface {
	AddUsage(ctx context.Context, deltas []tenants.UsageDelta) ([]tenants.UsageDelta, error)
	MonthMessages(ctx context.Context, tenant string, t time.Time) (int64, error)
}

var _ UsageStore = (*tenants.Store)(nil)

// meter counts one tenant's usage. The hot path only adds to atomics of the
// current hour's bucket; a flusher swaps them out about once a second and
// adds them to the store, so that a crash loses at most the last second and
// nothing is counted twice.
type meter struct {
	tenant string
	cur    atomic.Pointer[usageBucket]
	// live is the number of the tenant's device connections.
	live atomic.Int64
	// month counts messages in and out in the current month, recorded and
	// not yet recorded; loaded from the store when the meter starts.
	month      atomic.Int64
	monthStart time.Time // guarded by the flusher, the only writer

	mu      sync.Mutex
	retired []*usageBucket       // earlier hours' buckets, drained once more
	retry   []tenants.UsageDelta // what the store did not take last time
	last    time.Time            // when connection time was last added up (see accrue)
	// conn holds the connection time not yet recorded, by the hour it was
	// spent in, oldest first: one hour's, two after the hour turns. It is
	// recorded at the tenant's turn, connPhase into each period of
	// connEvery (see connPhase), so that the tenants' connection time
	// does not reach the store in one burst; in whole seconds, a fraction
	// left carried from flush to flush.
	conn      []connTime
	connEvery time.Duration
	connPhase time.Duration

	// Totals since the hub started, for metrics.
	totalIn, totalOut           atomic.Int64
	totalBytesIn, totalBytesOut atomic.Int64
	throttled, authFailures     atomic.Int64

	hitMu   sync.Mutex
	hits    map[string]int64     // quota → limit hits since the hub started
	lastHit map[string]time.Time // device and quota → last event raised

	// denied counts the tenant's denied publishes since the hub started;
	// denials folds them into events.
	denied  atomic.Int64
	denials denials
}

// usageBucket is one hour's counts not yet flushed.
type usageBucket struct {
	hour              time.Time
	msgsIn, msgsOut   atomic.Int64
	bytesIn, bytesOut atomic.Int64
	peak              atomic.Int64
	peakRecorded      int64 // guarded by the meter's mu
}

// connTime is connection time spent in one hour: the sum of the
// connections' times, kept in nanoseconds so that it adds up exactly.
type connTime struct {
	hour time.Time
	d    time.Duration
}

func newBucket(hour time.Time, live int64) *usageBucket {
	b := &usageBucket{hour: hour}
	b.peak.Store(live)
	return b
}

func monthOf(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// in counts a message accepted from a device or the API.
func (m *meter) in(payload int) {
	b := m.cur.Load()
	b.msgsIn.Add(1)
	b.bytesIn.Add(int64(payload))
	m.month.Add(1)
	m.totalIn.Add(1)
	m.totalBytesIn.Add(int64(payload))
}

// out counts a PUBLISH written to a device.
func (m *meter) out(payload int) {
	b := m.cur.Load()
	b.msgsOut.Add(1)
	b.bytesOut.Add(int64(payload))
	m.month.Add(1)
	m.totalOut.Add(1)
	m.totalBytesOut.Add(int64(payload))
}

// connected and disconnected follow the tenant's live connections and the
// hour's peak.
func (m *meter) connected() {
	n := m.live.Add(1)
	b := m.cur.Load()
	for {
		p := b.peak.Load()
		if n <= p || b.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func (m *meter) disconnected() { m.live.Add(-1) }

// drain takes a bucket's counts, leaving zeros (the peak stays: it is a
// maximum, not a sum).
func (b *usageBucket) drain() tenants.Usage {
	return tenants.Usage{
		MessagesIn: b.msgsIn.Swap(0), MessagesOut: b.msgsOut.Swap(0),
		BytesIn: b.bytesIn.Swap(0), BytesOut: b.bytesOut.Swap(0),
		PeakConnections: b.peak.Load(),
	}
}

// take returns what the meter has to record at now: the current hour's
// counts, the connection-seconds due (booked to the hours they were spent
// in), and what arrived late in earlier hours'.
// A new hour starts a new bucket; the old one is drained once more at the
// next flush, for adds that loaded it just before the switch.
func (m *meter) take(now time.Time, final bool) []tenants.UsageDelta {
	m.mu.Lock()
	defer m.mu.Unlock()
	hour := now.UTC().Truncate(time.Hour)
	out := m.retry
	m.retry = nil
	var fresh []tenants.UsageDelta
	for _, b := range m.retired {
		if u := b.drain(); u.MessagesIn+u.MessagesOut > 0 {
			u.PeakConnections = 0
			fresh = append(fresh, tenants.UsageDelta{Tenant: m.tenant, Hour: b.hour, Usage: u})
		}
	}
	m.retired = nil
	cur := m.cur.Load()
	if !cur.hour.Equal(hour) {
		m.cur.Store(newBucket(hour, m.live.Load()))
		m.retired = append(m.retired, cur)
	}
	u := cur.drain()
	// The peak goes out when it rose; connection time every connEvery, and
	// whatever whole seconds there are at the final flush: an idle tenant
	// with connections costs the store a row now and then, not every
	// second.
	peak := u.PeakConnections
	u.PeakConnections = 0
	if peak > cur.peakRecorded {
		u.PeakConnections, cur.peakRecorded = peak, peak
	}
	if m.monthStart != monthOf(now) {
		m.monthStart = monthOf(now)
		m.month.Store(0) // a new month: this flush's counts belong to the old one
	}
	if !u.IsZero() {
		fresh = append(fresh, tenants.UsageDelta{Tenant: m.tenant, Hour: cur.hour, Usage: u})
	}
	prev := m.last
	m.accrueLocked(now)
	// The turn is a period's start passed since the last flush, not a
	// period since the last write: a tenant whose devices come back after
	// an outage waits for its turn like the others. The hour that just
	// ended waits for it too, rather than have every tenant write its
	// row at the first flush of the hour; its time is booked to it all
	// the same.
	if turn := m.slotOf(now).After(m.slotOf(prev)); final || turn {
		for _, c := range m.takeConnLocked() {
			fresh = withConnection(fresh, m.tenant, c)
		}
	}
	return append(out, fresh...)
}

// takeConnLocked takes the whole connection-seconds held, by hour. An
// earlier hour's fraction of a second goes on to the next hour's, so that
// none is lost; the latest hour's is kept for the next time.
func (m *meter) takeConnLocked() []connTime {
	var out []connTime
	var carry time.Duration
	for _, c := range m.conn {
		c.d += carry
		whole := c.d.Truncate(time.Second)
		if carry = c.d - whole; whole > 0 {
			out = append(out, connTime{hour: c.hour, d: whole})
		}
	}
	if carry > 0 {
		m.conn = append(m.conn[:0], connTime{hour: m.conn[len(m.conn)-1].hour, d: carry})
	} else {
		m.conn = m.conn[:0]
	}
	return out
}

// withConnection adds c's connection-seconds to the delta of its hour in
// deltas, or as a delta of its own.
func withConnection(deltas []tenants.UsageDelta, tenant string, c connTime) []tenants.UsageDelta {
	secs := int64(c.d / time.Second)
	for i := range deltas {
		if deltas[i].Hour.Equal(c.hour) {
			deltas[i].ConnectionSeconds += secs
			return deltas
		}
	}
	return append(deltas, tenants.UsageDelta{Tenant: tenant, Hour: c.hour, Usage: tenants.Usage{ConnectionSeconds: secs}})
}

// accrue adds the connection time since the last flush, at the current
// number of connections, without flushing: the hub's Close takes it before
// it ends the connections, which would leave its final flush counting
// none since the last.
func (m *meter) accrue(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.accrueLocked(now)
}

// accrueLocked adds the connection time since the last flush, at the
// current number of connections, to the hours it was spent in.
func (m *meter) accrueLocked(now time.Time) {
	prev, live := m.last, time.Duration(m.live.Load())
	m.last = now
	if prev.IsZero() || !now.After(prev) || live <= 0 {
		return
	}
	for from := prev; from.Before(now); {
		hour := from.UTC().Truncate(time.Hour)
		to := hour.Add(time.Hour)
		if to.After(now) {
			to = now
		}
		if n := len(m.conn); n > 0 && m.conn[n-1].hour.Equal(hour) {
			m.conn[n-1].d += to.Sub(from) * live
		} else {
			m.conn = append(m.conn, connTime{hour: hour, d: to.Sub(from) * live})
		}
		from = to
	}
}

// giveBack keeps a delta the store did not take, to be tried again.
func (m *meter) giveBack(d tenants.UsageDelta) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.retry = append(m.retry, d)
}

// meterOf returns the tenant's meter, starting it if needed. A new meter
// reads the month's messages so far, for messages_per_month.
func (h *Hub) meterOf(tenant string) *meter {
	if m, ok := h.meters.Load(tenant); ok {
		return m.(*meter)
	}
	now := h.now()
	every := connFlushEvery * h.cfg.UsageInterval
	m := &meter{tenant: tenant, monthStart: monthOf(now), hits: map[string]int64{}, lastHit: map[string]time.Time{},
		last: now, connEvery: every, connPhase: connPhase(tenant, every)}
	m.cur.Store(newBucket(now.UTC().Truncate(time.Hour), 0))
	if h.cfg.Usage != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		n, err := h.cfg.Usage.MonthMessages(ctx, tenant, now)
		cancel()
		if err != nil {
			h.log.Error("read the month's usage", "tenant", tenant, "err", err)
		}
		m.month.Store(n)
	}
	actual, _ := h.meters.LoadOrStore(tenant, m)
	return actual.(*meter)
}

// connFlushEvery is how many usage intervals a tenant's connection time
// is held between its rows: 30 s at the default interval of 1 s.
const connFlushEvery = 30

// connPhase is where in every the tenant's connection time is flushed: the
// tenants' rows are spread over the period, not written in the one flush
// (1,000 tenants connected together wrote their 1,000 rows in the same
// few seconds of every five, 8-14 ms of SQLite a second on the core the
// brokers' deliveries wait for).
func connPhase(tenant string, every time.Duration) time.Duration {
	if every <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(tenant))
	return time.Duration(h.Sum64() % uint64(every))
}

// slotOf is the start of the tenant's flush period holding t: its periods
// start connPhase after a multiple of connEvery, the same on every hub.
func (m *meter) slotOf(t time.Time) time.Time {
	if m.connEvery <= 0 {
		return t
	}
	return t.Add(-m.connPhase).Truncate(m.connEvery).Add(m.connPhase)
}

// recordUsage records every meter's counts; the hub runs it every
// UsageInterval (recordUsageLoop).
func (h *Hub) recordUsage() { h.flushUsage(false) }

// recordUsageLoop records usage every UsageInterval, and once more just
// after each top of the hour: a flush is what turns a meter to the new
// hour's bucket, so that what is counted from the top of the hour until
// the next tick (up to a UsageInterval) would otherwise be booked to the
// hour before, and at the turn of a month to the month before.
func (h *Hub) recordUsageLoop() {
	tick := time.NewTicker(h.cfg.UsageInterval)
	defer tick.Stop()
	hour := time.NewTimer(untilNextHour(h.now()))
	defer hour.Stop()
	for {
		select {
		case <-h.done:
			return
		case <-tick.C:
			h.recordUsage()
		case <-hour.C:
			h.recordUsage()
			hour.Reset(untilNextHour(h.now()))
		}
	}
}

// untilNextHour is how long from now until just past the next top of the
// hour (UTC; a millisecond past, so that the flush then reads the new
// hour).
func untilNextHour(now time.Time) time.Duration {
	return now.UTC().Truncate(time.Hour).Add(time.Hour).Sub(now) + time.Millisecond
}

// flushTimeout bounds a flush; the final one's tries again included, so
// that the hub's Close, which waits for it, waits no longer than it did
// for its one try.
const flushTimeout = 10 * time.Second

// finalRetries are the waits before the final flush tries again what the
// store refused: a store that failed over or was briefly busy has time to
// come back, one that is down costs Close under 1.5 s more.
var finalRetries = []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, time.Second}

// flushUsage records every meter's counts; final (the hub's Close) takes
// every whole connection-second there is, whatever the tenant's phase.
// What the store refuses goes back to the meters for the next flush; the
// final flush, which has none, tries again (finalRetries) and logs what it
// could not record, for the bill to be mended by hand.
func (h *Hub) flushUsage(final bool) {
	now := h.now()
	var deltas []tenants.UsageDelta
	h.meters.Range(func(_, v any) bool {
		deltas = append(deltas, v.(*meter).take(now, final)...)
		return true
	})
	if h.cfg.Usage == nil || len(deltas) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	failed, err := h.addUsage(ctx, deltas)
	if !final {
		if err != nil {
			h.log.Error("record usage", "deltas", len(deltas), "failed", len(failed), "err", err)
		}
		for _, d := range failed {
			h.meterOf(d.Tenant).giveBack(d)
		}
		return
	}
	for _, wait := range finalRetries {
		if len(failed) == 0 {
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		if ctx.Err() != nil {
			break
		}
		failed, err = h.addUsage(ctx, failed)
	}
	if len(failed) == 0 {
		return
	}
	var lost tenants.Usage
	var names []string
	for _, d := range failed {
		lost.Add(d.Usage)
		if !slices.Contains(names, d.Tenant) {
			names = append(names, d.Tenant)
		}
	}
	slices.Sort(names)
	h.log.Error("usage lost at close: the store refused it", "tenants", strings.Join(names, ","),
		"messages", lost.MessagesIn+lost.MessagesOut, "bytes", lost.BytesIn+lost.BytesOut,
		"connection_seconds", lost.ConnectionSeconds, "deltas", len(failed), "err", err)
}

// addUsage adds deltas to the store and returns those it refused, but a
// tenant's that is gone: its meter is dropped, and its usage with it.
func (h *Hub) addUsage(ctx context.Context, deltas []tenants.UsageDelta) ([]tenants.UsageDelta, error) {
	failed, err := h.cfg.Usage.AddUsage(ctx, deltas)
	if len(failed) == 0 {
		return nil, err
	}
	gone := map[string]bool{}
	kept := failed[:0:0]
	for _, d := range failed {
		g, ok := gone[d.Tenant]
		if !ok {
			_, terr := h.cfg.Directory.Tenant(ctx, d.Tenant)
			g = errors.Is(terr, tenants.ErrNotFound)
			gone[d.Tenant] = g
		}
		if g {
			h.meters.Delete(d.Tenant)
			continue
		}
		kept = append(kept, d)
	}
	return kept, err
}
