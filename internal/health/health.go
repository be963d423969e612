// Package health shares one answer of a readiness check among the
// requests that come close together. /readyz answers anyone (load
// balancers, orchestrators), and each answer pinged the database: a flood
// of them from one address took the connection pool's slots from the
// requests that do work.
package health

import (
	"context"
	"sync"
	"time"
)

// Cached is a check whose answer serves every caller for ttl.
type Cached struct {
	check   func(context.Context) error
	ttl     time.Duration
	timeout time.Duration
	now     func() time.Time

	mu  sync.Mutex // held while checking: callers meanwhile wait for its answer
	at  time.Time  // when err was found; zero before the first check
	err error
}

// Cache returns check answered at most once per ttl. A check runs within
// timeout, on a context of its own: a caller that went away does not make
// the shared answer a failure.
func Cache(check func(context.Context) error, ttl, timeout time.Duration) *Cached {
	return &Cached{check: check, ttl: ttl, timeout: timeout, now: time.Now}
}

// Check returns the last answer if it is younger than ttl, else checks.
func (c *Cached) Check(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && c.now().Sub(c.at) < c.ttl {
		return c.err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	c.err = c.check(cctx)
	c.at = c.now()
	return c.err
}
