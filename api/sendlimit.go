package api

import (
	"fmt"
	"sync"
	"time"

	"github.com/roosthub/roost/tenants"
)

// sendTestsPerMinute bounds a tenant's send tests: each makes the hub send
// a request to a URL of the tenant's choosing, and the hub is not to be a
// request generator.
const sendTestsPerMinute = 10

// sendLimiter counts each tenant's send tests in a sliding minute.
type sendLimiter struct {
	now func() time.Time
	mu  sync.Mutex
	at  map[string][]time.Time
}

func newSendLimiter(now func() time.Time) *sendLimiter {
	return &sendLimiter{now: now, at: map[string][]time.Time{}}
}

// take counts one send test of tenant, or answers ErrThrottled with the
// wait.
func (l *sendLimiter) take(tenant string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if len(l.at) > 10_000 {
		for k, ts := range l.at {
			if now.Sub(ts[len(ts)-1]) >= time.Minute {
				delete(l.at, k)
			}
		}
	}
	ts := l.at[tenant]
	for len(ts) > 0 && now.Sub(ts[0]) >= time.Minute {
		ts = ts[1:]
	}
	if len(ts) >= sendTestsPerMinute {
		wait := ts[0].Add(time.Minute).Sub(now)
		l.at[tenant] = ts
		return tenants.Throttled(wait, fmt.Sprintf("at most %d send tests a minute per tenant", sendTestsPerMinute))
	}
	l.at[tenant] = append(ts, now)
	return nil
}
