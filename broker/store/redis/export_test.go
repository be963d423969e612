package redis

import (
	"context"
	"net"
	"sync/atomic"

	goredis "github.com/redis/go-redis/v9"
)

// Trips counts a store's round trips to Redis from the time CountTrips
// was called: single commands, pipelines, and the commands the pipelines
// carried.
type Trips struct {
	Singles, Pipelines, Piped, Grouped atomic.Int64
}

// CountTrips starts counting the store's round trips. Grouped counts the
// pipelines that carried more than one command.
func (s *Store) CountTrips() *Trips {
	t := &Trips{}
	s.rdb.AddHook(tripHook{t})
	return t
}

// Client returns the store's Redis client, for a test to send commands
// of its own (SCRIPT FLUSH).
func (s *Store) Client() *goredis.Client { return s.rdb }

type tripHook struct{ t *Trips }

func (h tripHook) DialHook(next goredis.DialHook) goredis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return next(ctx, network, addr)
	}
}

func (h tripHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		h.t.Singles.Add(1)
		return next(ctx, cmd)
	}
}

func (h tripHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		h.t.Pipelines.Add(1)
		h.t.Piped.Add(int64(len(cmds)))
		if len(cmds) > 1 {
			h.t.Grouped.Add(1)
		}
		return next(ctx, cmds)
	}
}
