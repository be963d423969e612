package cluster

import "time"

// SetWatchTimes sets how long r's watches' streams may be silent and how
// long they wait before they are opened again; before any Watch.
func SetWatchTimes(r *Remote, idle, retry time.Duration) {
	r.watchIdle, r.watchRetry, r.watchRetryMax = idle, retry, 4*retry
}

// SetWatchRehome sets how often r's watches look up their tenant's home;
// before any Watch.
func SetWatchRehome(r *Remote, every time.Duration) { r.watchRehome = every }
