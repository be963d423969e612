// Package rate is a token bucket whose rate can change while it is in use:
// quotas are edited live, and a connection's limiter follows the edit at its
// next use.
package rate

import (
	"sync"
	"time"
)

// Bucket holds up to burst tokens and refills at rate tokens per second. The
// zero value is ready; a rate of zero or less means no limit.
type Bucket struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
	rate   float64
	burst  float64
}

// Allow takes n tokens if the bucket has them, at the given rate and burst.
func (b *Bucket) Allow(now time.Time, n, rate, burst float64) bool {
	if rate <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(now, rate, burst)
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// Reserve takes n tokens, going into debt if need be, and returns how long
// the caller should wait for the debt to be repaid: a throttle that never
// refuses.
func (b *Bucket) Reserve(now time.Time, n, rate, burst float64) time.Duration {
	if rate <= 0 {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(now, rate, burst)
	b.tokens -= n
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / rate * float64(time.Second))
}

// refill adds what the time since the last use earned. A new bucket, or
// one whose rate or burst changed, starts full at the new burst.
func (b *Bucket) refill(now time.Time, rate, burst float64) {
	if b.last.IsZero() || rate != b.rate || burst != b.burst {
		if b.last.IsZero() || burst != b.burst {
			b.tokens = burst
		}
		b.rate, b.burst = rate, burst
		b.last = now
		return
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(burst, b.tokens+d.Seconds()*rate)
		b.last = now
	}
}
