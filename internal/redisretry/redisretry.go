// Package redisretry tells the Redis errors after which a command that
// must not run twice can still be sent again: those that say Redis did
// not run it. Roost sends such commands (a session store's append, a
// fabric's send) on clients that never retry on their own, since
// go-redis also retries after a connection failed once the command was
// written, when Redis may have run it.
package redisretry

import (
	"context"
	"errors"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Attempts is how many times a command Redis did not run is sent in all.
const Attempts = 3

// Unrun reports whether err says Redis did not run the command: a reply
// refusing it before it ran (the server loading its data, a replica or
// a master without its replicas refusing writes, a cluster moving
// slots, too many clients), or no connection to be had from the pool. A
// connection's failure or a timeout is not: the command may have run.
func Unrun(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, goredis.ErrPoolTimeout) {
		return true
	}
	s := err.Error()
	for _, p := range []string{"LOADING ", "READONLY ", "MASTERDOWN ", "CLUSTERDOWN ", "TRYAGAIN ", "NOREPLICAS ", "ERR max number of clients reached"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// Wait waits before attempt n+1 (n from 1): 50 ms, then 200 ms; it
// returns ctx's error if ctx ends first.
func Wait(ctx context.Context, n int) error {
	t := time.NewTimer(50 * time.Millisecond << (2 * (n - 1)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
