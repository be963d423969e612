package api

import (
	"math"
	"sync"
	"time"
)

// loginGuard throttles password guessing. For each key (an account's email, a
// source IP) it counts failed attempts: after `free` failures in a row each
// further attempt must wait twice as long as the one before (up to maxDelay),
// and no more than maxPerHour failures an hour are evaluated at all. A
// refused attempt does not reach the password hash, so it costs the server
// nothing and tells the guesser nothing.
type loginGuard struct {
	free       int
	maxPerHour int
	maxDelay   time.Duration
	now        func() time.Time

	mu        sync.Mutex
	keys      map[string]*attempts
	lastPrune time.Time
}

type attempts struct {
	failures []time.Time // within the last hour, oldest first
	streak   int         // failures since the last success
	last     time.Time
}

func newLoginGuard(free, maxPerHour int, now func() time.Time) *loginGuard {
	return &loginGuard{free: free, maxPerHour: maxPerHour, maxDelay: 15 * time.Minute, now: now, keys: map[string]*attempts{}}
}

// wait returns how long key must wait before its next attempt is evaluated,
// or 0 if it may go ahead now.
func (g *loginGuard) wait(key string) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	a := g.keys[key]
	if a == nil {
		return 0
	}
	a.trim(now)
	var wait time.Duration
	if len(a.failures) >= g.maxPerHour {
		wait = a.failures[0].Add(time.Hour).Sub(now)
	}
	if a.streak >= g.free {
		delay := time.Duration(math.Min(float64(time.Second)*math.Pow(2, float64(a.streak-g.free)), float64(g.maxDelay)))
		wait = max(wait, a.last.Add(delay).Sub(now))
	}
	return max(wait, 0)
}

func (g *loginGuard) failed(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	g.prune(now)
	a := g.keys[key]
	if a == nil {
		a = &attempts{}
		g.keys[key] = a
	}
	a.trim(now)
	a.failures = append(a.failures, now)
	a.streak++
	a.last = now
}

func (g *loginGuard) succeeded(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if a := g.keys[key]; a != nil {
		a.streak = 0
	}
}

func (a *attempts) trim(now time.Time) {
	i := 0
	for i < len(a.failures) && now.Sub(a.failures[i]) >= time.Hour {
		i++
	}
	a.failures = a.failures[i:]
}

// prune forgets keys with no failure in the last hour, once a minute, so the
// map stays as small as the set of recent guessers.
func (g *loginGuard) prune(now time.Time) {
	if now.Sub(g.lastPrune) < time.Minute {
		return
	}
	g.lastPrune = now
	for k, a := range g.keys {
		if now.Sub(a.last) >= time.Hour {
			delete(g.keys, k)
		}
	}
}
