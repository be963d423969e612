package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash/maphash"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/internal/lru"
	"github.com/roosthub/roost/tenants"
)

// budget is what one key of one kind of attempt is allowed: free attempts
// in a row before each further one must wait twice as long as the last
// (from one second up to maxDelay; free 0: no such waits), and at most
// perHour in any hour (0: no hourly bound). An address budget's keys are
// client addresses, counted by network (see network).
type budget struct {
	name    string
	free    int
	perHour int
	address bool
}

// maxDelay caps the doubling wait.
const maxDelay = 15 * time.Minute

// charge is one attempt counted against one key of a budget.
type charge struct {
	b   budget
	key string
}

func (c charge) id() string {
	key := c.key
	if c.b.address {
		key = network(key)
	}
	return c.b.name + "\x00" + key
}

// network is the key under which an address budget counts addr: an IPv4
// address as it is (an IPv4-mapped IPv6 one as IPv4), an IPv6 address by
// the /64 it is in, as the MQTT ingress counts handshakes (broker's
// sourceOf). A host, or a subscriber's network, is handed a whole /64 and
// may send from any address in it: counted per address, it would have 2^64
// budgets. What is not an IP address is its own key. Only the count is
// keyed so; logs and sessions keep the address itself.
func network(addr string) string {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return addr
	}
	ip = ip.Unmap()
	if ip.Is4() {
		return ip.String()
	}
	p, err := ip.WithZone("").Prefix(64)
	if err != nil {
		return addr
	}
	return p.String()
}

// trustFor is how long a success from an address vouches for that
// address and account.
const trustFor = 30 * 24 * time.Hour

// sharedTallies is where a limiter's counts live when every process of the
// control plane shares them: the database (tenants.Store). A key is named
// there by an id (see limiter.id).
type sharedTallies interface {
	UpdateTallies(ctx context.Context, ids []string, fn func(map[string]*tenants.Tally)) error
	Trust(ctx context.Context, id string, at time.Time) error
	TrustedSince(ctx context.Context, since time.Time) (map[string]time.Time, error)
	PruneTallies(ctx context.Context, now time.Time, trustFor time.Duration) error
}

// heldFor bounds how long a limiter answers, from what it last read, that
// a shared key must wait, without asking the database again: a flood on a
// key past its budget costs the database one update a key every heldFor,
// per process. A refund elsewhere (a success forgives a streak) is seen
// here that much late at most.
const heldFor = 5 * time.Second

// trustEvery is how often a limiter reads the sign-ins other processes
// noted since its last read: a pair that signed in through another process
// is trusted here that much later at most.
const trustEvery = 5 * time.Second

// sharedWait bounds a shared update: the wait for another attempt on the
// same key in this process, then the database's. Past it the attempt is
// refused for a second (a 429 with Retry-After), not counted elsewhere.
const sharedWait = 5 * time.Second

// limiter is the one place every throttled attempt of the API and the
// console is counted. It counts an attempt before the work it guards (a
// password hash, an account lookup), against all of its keys at once, so
// parallel attempts cannot spend more than the budget: the last free one
// is handed to exactly one of them. An attempt that turns out well is
// refunded.
//
// With shared tallies (the service's), the counts and the sign-ins that
// vouch for an address live in the database: every process counts against
// the same budgets, one key's attempts wait for each other (in this
// process, then in the database), and a restart forgets nothing. An
// attempt the database cannot count in time is refused for a second: the
// work it guards needs the database anyway, and counting it anywhere else
// would hand out a budget afresh.
type limiter struct {
	now    func() time.Time
	shared sharedTallies // nil: in memory only
	// idKey keys the ids of shared keys (an HMAC, so the database holds
	// no email or address, nor anything a dictionary reverses).
	idKey []byte
	log   *slog.Logger

	mu        sync.Mutex
	keys      map[string]*tenants.Tally // in memory only
	lastPrune time.Time
	// held are shared keys known to wait: until when the answer may be
	// given without the database (at most heldFor), and until when they
	// wait.
	held map[string][2]time.Time
	// trusted holds the (account, address) pairs that signed in lately,
	// with when: their correct password is not held up by what strangers
	// spent elsewhere. In memory only.
	trusted *lru.Cache[string, time.Time]
	// signedIn is, with shared tallies, the database's sign-ins of the
	// last trustFor by id, read again every trustEvery (readAt) from the
	// newest seen (seenTo).
	signedIn       map[string]time.Time
	readAt, seenTo time.Time
	reading        bool
	// failedAt is when the database last failed (logged at most once a
	// minute).
	failedAt time.Time
	pruning  atomic.Bool
	// lanes serialize the shared updates of one key in this process:
	// a burst on a key waits here, and all but the first are answered
	// from held.
	lanes [64]chan struct{}
}

func newLimiter(now func() time.Time, shared sharedTallies, idKey []byte, log *slog.Logger) *limiter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &limiter{now: now, shared: shared, idKey: idKey, log: log, keys: map[string]*tenants.Tally{},
		held: map[string][2]time.Time{}, trusted: lru.New[string, time.Time](100_000), signedIn: map[string]time.Time{}}
	for i := range l.lanes {
		l.lanes[i] = make(chan struct{}, 1)
	}
	return l
}

// id names a key in the shared tallies.
func (l *limiter) id(key string) string {
	m := hmac.New(sha256.New, l.idKey)
	m.Write([]byte(key))
	return hex.EncodeToString(m.Sum(nil))
}

// ids are the ids of charges' keys: their own keys in memory.
func (l *limiter) ids(charges []charge) []string {
	out := make([]string, len(charges))
	for i, c := range charges {
		out[i] = c.id()
		if l.shared != nil {
			out[i] = l.id(out[i])
		}
	}
	return out
}

// ticket is an attempt counted by reserve.
type ticket struct {
	l       *limiter
	charges []charge
	ids     []string
	at      time.Time
}

// errBusy is a shared update that did not get its key's lane in time.
var errBusy = errors.New("too many attempts on one key at once")

// reserve counts one attempt against every charge, or, if any of them must
// wait, against none, and returns the longest wait.
func (l *limiter) reserve(charges ...charge) (*ticket, time.Duration) {
	ids := l.ids(charges)
	if l.shared == nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		now := l.now()
		l.prune(now)
		if waits := spend(l.tallies(ids, now), charges, ids, now); len(waits) > 0 {
			return nil, longest(waits)
		}
		return &ticket{l: l, charges: charges, ids: ids, at: now}, 0
	}
	if wait := l.heldWait(ids, l.now()); wait > 0 {
		return nil, wait
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedWait)
	defer cancel()
	release, err := l.enter(ctx, ids)
	if err != nil {
		l.failed("count an attempt", err)
		return nil, time.Second
	}
	defer release()
	now := l.now()
	if wait := l.heldWait(ids, now); wait > 0 {
		return nil, wait // the attempt before this one found it
	}
	l.pruneShared(now)
	var waits map[string]time.Duration
	if err := l.shared.UpdateTallies(ctx, ids, func(ts map[string]*tenants.Tally) {
		waits = spend(ts, charges, ids, now)
	}); err != nil {
		l.failed("count an attempt", err)
		return nil, time.Second
	}
	if len(waits) > 0 {
		l.hold(waits, now)
		return nil, longest(waits)
	}
	return &ticket{l: l, charges: charges, ids: ids, at: now}, 0
}

// enter takes the lanes of ids (in one order), waiting until ctx is done at
// most, and returns their release.
func (l *limiter) enter(ctx context.Context, ids []string) (func(), error) {
	var lanes []int
	for _, id := range ids {
		lanes = append(lanes, int(maphash.String(laneSeed, id)%uint64(len(l.lanes))))
	}
	slices.Sort(lanes)
	lanes = slices.Compact(lanes)
	release := func(n int) {
		for _, i := range lanes[:n] {
			<-l.lanes[i]
		}
	}
	for n, i := range lanes {
		select {
		case l.lanes[i] <- struct{}{}:
		case <-ctx.Done():
			release(n)
			return nil, errBusy
		}
	}
	return func() { release(len(lanes)) }, nil
}

var laneSeed = maphash.MakeSeed()

// spend counts an attempt at now against every charge's tally in ts (by
// its id in ids), or, if any must wait, against none; it returns the
// waits of the ids that wait.
func spend(ts map[string]*tenants.Tally, charges []charge, ids []string, now time.Time) map[string]time.Duration {
	var waits map[string]time.Duration
	for i, c := range charges {
		if w := waitOf(ts[ids[i]], c.b, now); w > 0 {
			if waits == nil {
				waits = map[string]time.Duration{}
			}
			waits[ids[i]] = max(waits[ids[i]], w)
		}
	}
	if len(waits) > 0 {
		return waits
	}
	for i := range charges {
		t := ts[ids[i]]
		t.Times = append(t.Times, now)
		t.Streak++
		t.Last = now
	}
	return nil
}

// longest is the longest of waits.
func longest(waits map[string]time.Duration) time.Duration {
	var w time.Duration
	for _, d := range waits {
		w = max(w, d)
	}
	return w
}

// tallies are the in-memory tallies of ids, made where missing. Called
// with l.mu held.
func (l *limiter) tallies(ids []string, now time.Time) map[string]*tenants.Tally {
	ts := make(map[string]*tenants.Tally, len(ids))
	for _, id := range ids {
		t := l.keys[id]
		if t == nil {
			if len(l.keys) >= maxKeys {
				l.shed(now)
			}
			t = &tenants.Tally{}
			l.keys[id] = t
		}
		ts[id] = t
	}
	return ts
}

// heldWait is how long ids must wait by what this limiter last read of the
// shared keys that wait, if it may still answer from it.
func (l *limiter) heldWait(ids []string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var wait time.Duration
	for _, id := range ids {
		h, ok := l.held[id]
		if !ok {
			continue
		}
		if !now.Before(h[0]) {
			delete(l.held, id)
			continue
		}
		wait = max(wait, h[1].Sub(now))
	}
	return wait
}

// hold notes that shared keys wait, each its own wait from now.
func (l *limiter) hold(waits map[string]time.Duration, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.held) >= 100_000 {
		clear(l.held) // a flood over that many keys: read them again
	}
	for id, w := range waits {
		l.held[id] = [2]time.Time{now.Add(min(w, heldFor)), now.Add(w)}
	}
}

// failed logs a failure of the shared tallies, at most once a minute.
func (l *limiter) failed(what string, err error) {
	l.mu.Lock()
	now := l.now()
	quiet := !l.failedAt.IsZero() && now.Sub(l.failedAt) < time.Minute
	if !quiet {
		l.failedAt = now
	}
	l.mu.Unlock()
	if !quiet {
		l.log.Error("throttle: "+what+" in the database failed; attempts are refused for a second meanwhile", "err", err)
	}
}

// wait returns how long the next attempt on c must wait.
func (l *limiter) wait(c charge) time.Duration {
	ids := l.ids([]charge{c})
	now := l.now()
	if l.shared == nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		return waitOf(l.keys[ids[0]], c.b, now)
	}
	if wait := l.heldWait(ids, now); wait > 0 {
		return wait
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedWait)
	defer cancel()
	var wait time.Duration
	if err := l.shared.UpdateTallies(ctx, ids, func(ts map[string]*tenants.Tally) {
		wait = waitOf(ts[ids[0]], c.b, now)
	}); err != nil {
		l.failed("read a count", err)
		return time.Second
	}
	return wait
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
	if l.shared == nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		ts := make(map[string]*tenants.Tally, len(t.ids))
		for _, id := range t.ids {
			if ta := l.keys[id]; ta != nil {
				ts[id] = ta
			}
		}
		unspend(ts, t.charges, t.ids, t.at, forgive)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedWait)
	defer cancel()
	if err := l.shared.UpdateTallies(ctx, t.ids, func(ts map[string]*tenants.Tally) {
		unspend(ts, t.charges, t.ids, t.at, forgive)
	}); err != nil {
		// The attempt stays counted, as a failure would be.
		l.failed("refund an attempt", err)
	}
}

// unspend takes the attempt made at at off every charge's tally in ts (by
// its id in ids), and forgives the streaks of the budgets in forgive.
func unspend(ts map[string]*tenants.Tally, charges []charge, ids []string, at time.Time, forgive []budget) {
	for i, c := range charges {
		ta := ts[ids[i]]
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
	if l.shared == nil {
		l.mu.Lock()
		l.trusted.Add(key, now)
		l.mu.Unlock()
		return
	}
	id := l.id(key)
	l.mu.Lock()
	l.signedIn[id] = now
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), sharedWait)
	defer cancel()
	if err := l.shared.Trust(ctx, id, now); err != nil {
		l.failed("note a sign-in", err)
	}
}

// isTrusted reports whether key signed in within trustFor. With shared
// tallies it answers from the sign-ins read from the database (see
// readSignIns): no attempt costs the database a read of its own.
func (l *limiter) isTrusted(key string) bool {
	now := l.now()
	if l.shared == nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		at, ok := l.trusted.Get(key)
		return ok && now.Sub(at) < trustFor
	}
	l.readSignIns(now)
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.signedIn[l.id(key)]
	return ok && now.Sub(at) < trustFor
}

// readSignIns reads the sign-ins noted since the last read, if that was
// trustEvery ago or more (one caller reads; the others answer from what
// was read before).
func (l *limiter) readSignIns(now time.Time) {
	l.mu.Lock()
	if l.reading || !l.readAt.IsZero() && now.Sub(l.readAt) < trustEvery {
		l.mu.Unlock()
		return
	}
	l.reading = true
	since := l.seenTo
	if since.IsZero() {
		since = now.Add(-trustFor)
	}
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), sharedWait)
	defer cancel()
	got, err := l.shared.TrustedSince(ctx, since)
	l.mu.Lock()
	l.reading, l.readAt = false, now
	for id, at := range got {
		if at.After(l.signedIn[id]) {
			l.signedIn[id] = at
		}
		if at.After(l.seenTo) {
			l.seenTo = at
		}
	}
	l.mu.Unlock()
	if err != nil {
		l.failed("read the sign-ins", err)
	}
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
// hour, so the maps stay as small as the set of recent callers. Called
// with l.mu held.
// maxKeys bounds the keys counted in memory (a data-plane node's operator
// check): a key is kept for the hour of its budget, and one attacker with
// many addresses (IPv6 /64s come by the million) made as many.
const maxKeys = 100_000

// shed makes room among the keys counted in memory: it prunes, and if
// that is not enough drops keys at random (the map's order) down to nine
// tenths of maxKeys. A key dropped starts its count again: what the
// operator token's throttle keeps cheap, the token's 192 bits keep safe.
func (l *limiter) shed(now time.Time) {
	l.lastPrune = time.Time{}
	l.prune(now)
	for k := range l.keys {
		if len(l.keys) < maxKeys*9/10 {
			break
		}
		delete(l.keys, k)
	}
}

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
	for id, at := range l.signedIn {
		if now.Sub(at) >= trustFor {
			delete(l.signedIn, id)
		}
	}
}

// pruneShared prunes memory and, in the background, the shared tallies
// with nothing left in them and the sign-ins past trustFor, once a minute.
func (l *limiter) pruneShared(now time.Time) {
	l.mu.Lock()
	due := now.Sub(l.lastPrune) >= time.Minute
	l.prune(now)
	l.mu.Unlock()
	if !due || !l.pruning.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer l.pruning.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := l.shared.PruneTallies(ctx, now, trustFor); err != nil {
			l.failed("delete old counts", err)
		}
	}()
}

// tallyKey is the key of the shared tallies' ids, derived from the signing
// key every control-plane process has.
func tallyKey(signingKey []byte) []byte {
	m := hmac.New(sha256.New, signingKey)
	m.Write([]byte("roost auth tallies"))
	return m.Sum(nil)
}
