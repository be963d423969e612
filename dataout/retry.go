package dataout

import (
	"math/rand/v2"
	"time"
)

// Outcome is what becomes of a batch after an attempt.
type Outcome string

// The outcomes.
const (
	Delivered Outcome = "delivered"
	Retry     Outcome = "retry"
	Dead      Outcome = "dead" // past the horizon: to the dead-letter list
)

// Policy is the retry schedule: exponential backoff with full jitter
// (each wait drawn uniformly from zero to min(Max, Base·2^n)), until
// Horizon after the first attempt; then the batch is dead.
type Policy struct {
	Base    time.Duration // default 1s
	Max     time.Duration // default 1h
	Horizon time.Duration // default 24h
	// Rand returns a number in [0, 1); nil: math/rand/v2.
	Rand func() float64
}

// DefaultHorizon is how long a batch is retried before it is dead.
const DefaultHorizon = 24 * time.Hour

func (p Policy) withDefaults() Policy {
	if p.Base <= 0 {
		p.Base = time.Second
	}
	if p.Max <= 0 {
		p.Max = time.Hour
	}
	if p.Horizon <= 0 {
		p.Horizon = DefaultHorizon
	}
	if p.Rand == nil {
		p.Rand = rand.Float64
	}
	return p
}

// Backoff is the wait after the n-th failed attempt (n from 1).
func (p Policy) Backoff(n int) time.Duration {
	p = p.withDefaults()
	ceil := p.Max
	if n < 1 {
		n = 1
	}
	if n-1 < 62 {
		if d := p.Base << (n - 1); d > 0 && d < ceil {
			ceil = d
		}
	}
	return time.Duration(p.Rand() * float64(ceil))
}

// Decision is what to do with a batch after an attempt.
type Decision struct {
	Outcome Outcome
	// At is when to try again (Retry only).
	At time.Time
}

// Decide turns the n-th attempt (n from 1) at a batch first tried at
// first, made at now, into delivered, retry at a time, or dead. A
// receiver's Retry-After is waited when longer than the backoff; no wait
// passes the horizon, so the last attempt is made at it.
func (p Policy) Decide(first time.Time, n int, now time.Time, a Attempt) Decision {
	if a.OK() {
		return Decision{Outcome: Delivered}
	}
	p = p.withDefaults()
	end := first.Add(p.Horizon)
	if !now.Before(end) {
		return Decision{Outcome: Dead}
	}
	wait := max(p.Backoff(n), min(a.RetryAfter, p.Max))
	at := now.Add(wait)
	if at.After(end) {
		at = end
	}
	return Decision{Outcome: Retry, At: at}
}
