// Package throttle bounds costly attempts per key: password guesses per
// account and per address, signups per address, MQTT authentication failures
// per address and per username.
package throttle

import (
	"math"
	"sync"
	"time"
)

// Limiter bounds costly attempts per key (an account's email, a source
// address). It counts the attempts it is told of: after `free` in a row each
// further attempt must wait twice as long as the one before (up to maxDelay),
// and no more than maxPerHour an hour are let through at all. Logins count
// their failures, so password guessing is slowed and then locked; signups
// count every attempt, since each one hashes a password. A refused attempt
// never reaches the password hash, so it costs the server nothing and tells
// the guesser nothing.
type Limiter struct {
	free       int
	maxPerHour int
	maxDelay   time.Duration
	now        func() time.Time

	mu        sync.Mutex
	keys      map[string]*attempts
	lastPrune time.Time
}

type attempts struct {
	times  []time.Time // counted attempts within the last hour, oldest first
	streak int         // counted attempts since the last reset
	last   time.Time
}

// New returns a limiter that starts doubling delays after free attempts in a
// row and lets at most maxPerHour through an hour. now is its clock.
func New(free, maxPerHour int, now func() time.Time) *Limiter {
	return &Limiter{free: free, maxPerHour: maxPerHour, maxDelay: 15 * time.Minute, now: now, keys: map[string]*attempts{}}
}

// Wait returns how long key must wait before its next attempt is evaluated,
// or 0 if it may go ahead now.
func (g *Limiter) Wait(key string) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	a := g.keys[key]
	if a == nil {
		return 0
	}
	a.trim(now)
	var wait time.Duration
	if len(a.times) >= g.maxPerHour {
		wait = a.times[0].Add(time.Hour).Sub(now)
	}
	if a.streak >= g.free {
		delay := time.Duration(math.Min(float64(time.Second)*math.Pow(2, float64(a.streak-g.free)), float64(g.maxDelay)))
		wait = max(wait, a.last.Add(delay).Sub(now))
	}
	return max(wait, 0)
}

// Count records an attempt by key.
func (g *Limiter) Count(key string) {
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
	a.times = append(a.times, now)
	a.streak++
	a.last = now
}

// Reset ends key's streak (a login succeeded); the hourly count stays.
func (g *Limiter) Reset(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if a := g.keys[key]; a != nil {
		a.streak = 0
	}
}

func (a *attempts) trim(now time.Time) {
	i := 0
	for i < len(a.times) && now.Sub(a.times[i]) >= time.Hour {
		i++
	}
	a.times = a.times[i:]
	if len(a.times) == 0 {
		a.streak = 0 // a quiet hour forgives the streak
	}
}

// prune forgets keys with no attempt in the last hour, once a minute, so the
// map stays as small as the set of recent guessers.
func (g *Limiter) prune(now time.Time) {
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
