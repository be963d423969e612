package auth

import (
	"sync"
	"time"

	"github.com/roosthub/roost/internal/lru"
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

// tally is what a key has spent.
type tally struct {
	times  []time.Time // attempts counted within the last hour, oldest first
	streak int         // attempts counted since the streak was last forgiven
	last   time.Time
}

// trustFor is how long a success from an address vouches for that
// address and account.
const trustFor = 30 * 24 * time.Hour

// limiter is the one place every throttled attempt of the API and the
// console is counted. It counts an attempt before the work it guards (a
// password hash, an account lookup), against all of its keys at once under
// one lock, so parallel attempts cannot spend more than the budget: the
// last free one is handed to exactly one of them. An attempt that turns out
// well is refunded.
type limiter struct {
	now func() time.Time

	mu        sync.Mutex
	keys      map[string]*tally
	lastPrune time.Time
	// trusted holds the (account, address) pairs that signed in lately,
	// with when: their correct password is not held up by what strangers
	// spent elsewhere.
	trusted *lru.Cache[string, time.Time]
}

func newLimiter(now func() time.Time) *limiter {
	return &limiter{now: now, keys: map[string]*tally{}, trusted: lru.New[string, time.Time](100_000)}
}

// ticket is an attempt counted by reserve.
type ticket struct {
	l       *limiter
	charges []charge
	at      time.Time
}

// reserve counts one attempt against every charge, or, if any of them must
// wait, against none, and returns the longest wait.
func (l *limiter) reserve(charges ...charge) (*ticket, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.prune(now)
	var wait time.Duration
	for _, c := range charges {
		wait = max(wait, l.waitLocked(c, now))
	}
	if wait > 0 {
		return nil, wait
	}
	for _, c := range charges {
		t := l.keys[c.id()]
		if t == nil {
			t = &tally{}
			l.keys[c.id()] = t
		}
		t.times = append(t.times, now)
		t.streak++
		t.last = now
	}
	return &ticket{l: l, charges: charges, at: now}, 0
}

// wait returns how long the next attempt on c must wait.
func (l *limiter) wait(c charge) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waitLocked(c, l.now())
}

func (l *limiter) waitLocked(c charge, now time.Time) time.Duration {
	t := l.keys[c.id()]
	if t == nil {
		return 0
	}
	t.trim(now)
	var wait time.Duration
	if c.b.perHour > 0 && len(t.times) >= c.b.perHour {
		wait = t.times[len(t.times)-c.b.perHour].Add(time.Hour).Sub(now)
	}
	if c.b.free > 0 && t.streak >= c.b.free {
		delay := maxDelay
		if n := t.streak - c.b.free; n < 10 {
			delay = min(time.Second<<n, maxDelay)
		}
		wait = max(wait, t.last.Add(delay).Sub(now))
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
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range t.charges {
		ta := l.keys[c.id()]
		if ta == nil {
			continue
		}
		for i := len(ta.times) - 1; i >= 0; i-- {
			if ta.times[i].Equal(t.at) {
				ta.times = append(ta.times[:i], ta.times[i+1:]...)
				break
			}
		}
		ta.streak = max(ta.streak-1, 0)
		for _, b := range forgive {
			if b.name == c.b.name {
				ta.streak = 0
			}
		}
	}
}

// trust notes that key (an account and an address) signed in now.
func (l *limiter) trust(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.trusted.Add(key, l.now())
}

// isTrusted reports whether key signed in within trustFor.
func (l *limiter) isTrusted(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.trusted.Get(key)
	return ok && l.now().Sub(at) < trustFor
}

// trim drops attempts older than an hour; a quiet hour forgives the streak.
func (t *tally) trim(now time.Time) {
	i := 0
	for i < len(t.times) && now.Sub(t.times[i]) >= time.Hour {
		i++
	}
	t.times = t.times[i:]
	if len(t.times) == 0 {
		t.streak = 0
	}
}

// prune forgets, once a minute, keys with nothing counted in the last
// hour, so the map stays as small as the set of recent callers.
func (l *limiter) prune(now time.Time) {
	if now.Sub(l.lastPrune) < time.Minute {
		return
	}
	l.lastPrune = now
	for k, t := range l.keys {
		if t.trim(now); len(t.times) == 0 {
			delete(l.keys, k)
		}
	}
}
