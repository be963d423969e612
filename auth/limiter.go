package auth

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/roosthub/roost/internal/lru"
	"github.com/roosthub/roost/tenants"
)

// budget is what one key of one kind of attempt is allowed: free attempts
// in a row before each further one must wait twice as long as the last
// (from one second up to maxDelay; free 0: no such waits), and at most
// perHour in any hour (0: no hourly bound).
type budget struct {
	name    string
	free    int
	perHour int
}

// maxDelay caps the doubling wait.
const maxDelay = 15 * time.Minute

// charge is one attempt counted against one key of a budget.
type charge struct {
	b   budget
	key string
}

func (c charge) id() string { return c.b.name + "\x00" + c.key }

// trustFor is how long a success from an address vouches for that
// address and account.
const trustFor = 30 * 24 * time.Hour

// sharedTallies is where a limiter's counts live when every process of the
// control plane shares them: the database (tenants.Store).
type sharedTallies interface {
	UpdateTallies(ctx context.Context, keys []string, fn func(map[string]*tenants.Tally)) error
	Trust(ctx context.Context, key string, at time.Time) error
	TrustedAt(ctx context.Context, key string) (time.Time, bool, error)
	PruneTallies(ctx context.Context, now time.Time, trustFor time.Duration) error
}

// heldFor bounds how long a limiter answers, from what it last read, that
// a shared key must wait, without asking the database again: a flood on a
// key past its budget costs the database one read a key every heldFor, per
// process. A refund elsewhere (a success forgives a streak) is seen here
// that much late at most.
const heldFor = 5 * time.Second

// untrustedFor is how long a limiter takes a pair that had not signed in
// for one that still has not, without asking the database again.
const untrustedFor = 5 * time.Second

// limiter is the one place every throttled attempt of the API and the
// console is counted. It counts an attempt before the work it guards (a
// password hash, an account lookup), against all of its keys at once, so
// parallel attempts cannot spend more than the budget: the last free one
// is handed to exactly one of them. An attempt that turns out well is
// refunded.
//
// With shared tallies (the service's), the counts and the sign-ins that
// vouch for an address live in the database: every process counts against
// the same budgets, one key's attempts wait for each other there, and a
// restart forgets nothing. While the database cannot be reached, attempts
// are counted in this process's memory, as a limiter without shared
// tallies always counts them.
type limiter struct {
	now    func() time.Time
	shared sharedTallies // nil: in memory only
	log    *slog.Logger

	mu        sync.Mutex
	keys      map[string]*tenants.Tally
	lastPrune time.Time
	// held are shared keys known to wait: until when the answer may be
	// given without the database (at most heldFor), and until when they
	// wait.
	held map[string][2]time.Time
	// trusted holds the (account, address) pairs that signed in lately,
	// with when: their correct password is not held up by what strangers
	// spent elsewhere. With shared tallies it holds those read or written
	// here, and untrusted those found not to have signed in.
	trusted   *lru.Cache[string, time.Time]
	untrusted *lru.Cache[string, time.Time]
	// failedAt is when the database last failed an update (logged at most
	// once a minute).
	failedAt time.Time
}

func newLimiter(now func() time.Time, shared sharedTallies, log *slog.Logger) *limiter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &limiter{now: now, shared: shared, log: log, keys: map[string]*tenants.Tally{}, held: map[string][2]time.Time{},
		trusted: lru.New[string, time.Time](100_000), untrusted: lru.New[string, time.Time](100_000)}
}

// ticket is an attempt counted by reserve.
type ticket struct {
	l       *limiter
	charges []charge
	at      time.Time
	// shared: counted in the shared tallies (not in memory).
	shared bool
}

// sharedCtx bounds one update of the shared tallies.
func sharedCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

// reserve counts one attempt against every charge, or, if any of them must
// wait, against none, and returns the longest wait.
func (l *limiter) reserve(charges ...charge) (*ticket, time.Duration) {
	now := l.now()
	if l.shared != nil {
		if wait := l.heldWait(charges, now); wait > 0 {
			return nil, wait
		}
		l.pruneShared(now)
		var wait time.Duration
		var waiting []string
		ctx, cancel := sharedCtx()
		err := l.shared.UpdateTallies(ctx, ids(charges), func(ts map[string]*tenants.Tally) {
			wait, waiting = spend(ts, charges, now)
		})
		cancel()
		if err == nil {
			if wait > 0 {
				l.hold(waiting, now, wait)
				return nil, wait
			}
			return &ticket{l: l, charges: charges, at: now, shared: true}, 0
		}
		l.failed("count an attempt", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prune(now)
	wait, _ := spend(l.tallies(charges), charges, now)
	if wait > 0 {
		return nil, wait
	}
	return &ticket{l: l, charges: charges, at: now}, 0
}

// spend counts an attempt at now against every charge's tally in ts, or,
// if any must wait, against none; it returns the longest wait and the
// keys that wait.
func spend(ts map[string]*tenants.Tally, charges []charge, now time.Time) (time.Duration, []string) {
	var wait time.Duration
	var waiting []string
	for _, c := range charges {
		if w := waitOf(ts[c.id()], c.b, now); w > 0 {
			wait = max(wait, w)
			waiting = append(waiting, c.id())
		}
	}
	if wait > 0 {
		return wait, waiting
	}
	for _, c := range charges {
		t := ts[c.id()]
		t.Times = append(t.Times, now)
		t.Streak++
		t.Last = now
	}
	return 0, nil
}

// ids are the charges' keys.
func ids(charges []charge) []string {
	out := make([]string, len(charges))
	for i, c := range charges {
		out[i] = c.id()
	}
	return out
}

// tallies are the in-memory tallies of charges, made where missing. Called
// with l.mu held.
func (l *limiter) tallies(charges []charge) map[string]*tenants.Tally {
	ts := make(map[string]*tenants.Tally, len(charges))
	for _, c := range charges {
		t := l.keys[c.id()]
		if t == nil {
			t = &tenants.Tally{}
			l.keys[c.id()] = t
		}
		ts[c.id()] = t
	}
	return ts
}

// heldWait is how long charges must wait by what this limiter last read of
// the shared keys that wait, if it may still answer from it.
func (l *limiter) heldWait(charges []charge, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var wait time.Duration
	for _, c := range charges {
		h, ok := l.held[c.id()]
		if !ok {
			continue
		}
		if !now.Before(h[0]) {
			delete(l.held, c.id())
			continue
		}
		wait = max(wait, h[1].Sub(now))
	}
	return wait
}

// hold notes that shared keys wait wait from now.
func (l *limiter) hold(keys []string, now time.Time, wait time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.held) >= 100_000 {
		clear(l.held) // a flood over that many keys: read them again
	}
	for _, k := range keys {
		l.held[k] = [2]time.Time{now.Add(min(wait, heldFor)), now.Add(wait)}
	}
}

// failed logs a failure of the shared tallies, at most once a minute.
func (l *limiter) failed(what string, err error) {
	l.mu.Lock()
	now := l.now()
	quiet := now.Sub(l.failedAt) < time.Minute
	if !quiet {
		l.failedAt = now
	}
	l.mu.Unlock()
	if !quiet {
		l.log.Error("throttle: "+what+" in the database failed; counting in this process's memory meanwhile", "err", err)
	}
}

// wait returns how long the next attempt on c must wait.
func (l *limiter) wait(c charge) time.Duration {
	now := l.now()
	if l.shared != nil {
		if wait := l.heldWait([]charge{c}, now); wait > 0 {
			return wait
		}
		var wait time.Duration
		ctx, cancel := sharedCtx()
		err := l.shared.UpdateTallies(ctx, []string{c.id()}, func(ts map[string]*tenants.Tally) {
			wait = waitOf(ts[c.id()], c.b, now)
		})
		cancel()
		if err == nil {
			return wait
		}
		l.failed("read a count", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return waitOf(l.keys[c.id()], c.b, now)
}

// waitOf is how long the next attempt on a key of budget b with tally t
// (nil: none) must wait at now. It trims t.
func waitOf(t *tenants.Tally, b budget, now time.Time) time.Duration {
	if t == nil {
		return 0
	}
	trim(t, now)
	var wait time.Duration
	if b.perHour > 0 && len(t.Times) >= b.perHour {
		wait = t.Times[len(t.Times)-b.perHour].Add(time.Hour).Sub(now)
	}
	if b.free > 0 && t.Streak >= b.free {
		delay := maxDelay
		if n := t.Streak - b.free; n < 10 {
			delay = min(time.Second<<n, maxDelay)
		}
		wait = max(wait, t.Last.Add(delay).Sub(now))
	}
	return max(wait, 0)
}

// refund gives the attempt back to every key it was counted against (it
// succeeded, or was never evaluated), and forgives the streaks of the
// budgets named: their keys start again from nothing.
func (t *ticket) refund(forgive ...budget) {
	if t == nil {
		return
	}
	l := t.l
	if t.shared {
		ctx, cancel := sharedCtx()
		err := l.shared.UpdateTallies(ctx, ids(t.charges), func(ts map[string]*tenants.Tally) {
			unspend(ts, t.charges, t.at, forgive)
		})
		cancel()
		if err != nil {
			l.failed("refund an attempt", err)
		}
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ts := make(map[string]*tenants.Tally, len(t.charges))
	for _, c := range t.charges {
		if ta := l.keys[c.id()]; ta != nil {
			ts[c.id()] = ta
		}
	}
	unspend(ts, t.charges, t.at, forgive)
}

// unspend takes the attempt made at at off every charge's tally in ts, and
// forgives the streaks of the budgets in forgive.
func unspend(ts map[string]*tenants.Tally, charges []charge, at time.Time, forgive []budget) {
	for _, c := range charges {
		ta := ts[c.id()]
		if ta == nil {
			continue
		}
		for i := len(ta.Times) - 1; i >= 0; i-- {
			if ta.Times[i].Equal(at) {
				ta.Times = append(ta.Times[:i], ta.Times[i+1:]...)
				break
			}
		}
		ta.Streak = max(ta.Streak-1, 0)
		for _, b := range forgive {
			if b.name == c.b.name {
				ta.Streak = 0
			}
		}
	}
}

// trust notes that key (an account and an address) signed in now.
func (l *limiter) trust(key string) {
	now := l.now()
	l.mu.Lock()
	l.trusted.Add(key, now)
	l.untrusted.Remove(key)
	l.mu.Unlock()
	if l.shared != nil {
		ctx, cancel := sharedCtx()
		defer cancel()
		if err := l.shared.Trust(ctx, key, now); err != nil {
			l.failed("note a sign-in", err)
		}
	}
}

// isTrusted reports whether key signed in within trustFor.
func (l *limiter) isTrusted(key string) bool {
	now := l.now()
	l.mu.Lock()
	at, ok := l.trusted.Get(key)
	if ok && now.Sub(at) < trustFor {
		l.mu.Unlock()
		return true
	}
	checked, known := l.untrusted.Get(key)
	l.mu.Unlock()
	if l.shared == nil || known && now.Sub(checked) < untrustedFor {
		return false
	}
	ctx, cancel := sharedCtx()
	defer cancel()
	at, ok, err := l.shared.TrustedAt(ctx, key)
	if err != nil {
		l.failed("read a sign-in", err)
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if ok && now.Sub(at) < trustFor {
		l.trusted.Add(key, at)
		return true
	}
	l.untrusted.Add(key, now)
	return false
}

// trim drops attempts older than an hour; a quiet hour forgives the streak.
func trim(t *tenants.Tally, now time.Time) {
	i := 0
	for i < len(t.Times) && now.Sub(t.Times[i]) >= time.Hour {
		i++
	}
	t.Times = t.Times[i:]
	if len(t.Times) == 0 {
		t.Streak = 0
	}
}

// prune forgets, once a minute, keys with nothing counted in the last
// hour, so the map stays as small as the set of recent callers. Called
// with l.mu held.
func (l *limiter) prune(now time.Time) {
	if now.Sub(l.lastPrune) < time.Minute {
		return
	}
	l.lastPrune = now
	for k, t := range l.keys {
		if trim(t, now); len(t.Times) == 0 {
			delete(l.keys, k)
		}
	}
	for k, h := range l.held {
		if !now.Before(h[0]) {
			delete(l.held, k)
		}
	}
}

// pruneShared deletes, once a minute, the shared tallies with nothing left
// in them and the sign-ins past trustFor (and prunes memory).
func (l *limiter) pruneShared(now time.Time) {
	l.mu.Lock()
	due := now.Sub(l.lastPrune) >= time.Minute
	l.prune(now)
	l.mu.Unlock()
	if !due {
		return
	}
	ctx, cancel := sharedCtx()
	defer cancel()
	if err := l.shared.PruneTallies(ctx, now, trustFor); err != nil {
		l.failed("delete old counts", err)
	}
}
