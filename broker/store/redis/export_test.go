package redis

import (
	"context"
	"net"
	"slices"
	"sync"
	"sync/atomic"

	goredis "github.com/redis/go-redis/v9"
)

// Trips counts a store's script calls to Redis from the time CountTrips
// was called: those sent alone (Singles), the pipelines of them, the
// calls the pipelines carried, the pipelines that carried more than one
// (Grouped), and the EVALs pipelines carried (appends sent again after a
// NOSCRIPT). Other commands (a new connection's HELLO) are not counted.
type Trips struct {
	Singles, Pipelines, Piped, Grouped, Evals atomic.Int64
}

// CountTrips starts counting the store's round trips.
func (s *Store) CountTrips() *Trips {
	t := &Trips{}
	s.rdb.AddHook(tripHook{t})
	s.appendRdb.AddHook(tripHook{t})
	return t
}

type tripHook struct{ t *Trips }

func (h tripHook) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (h tripHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if !isScript(cmd) {
			return next(ctx, cmd)
		}
		h.t.Singles.Add(1)
		return next(ctx, cmd)
	}
}

func (h tripHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		if !slices.ContainsFunc(cmds, isScript) {
			return next(ctx, cmds)
		}
		h.t.Pipelines.Add(1)
		h.t.Piped.Add(int64(len(cmds)))
		if len(cmds) > 1 {
			h.t.Grouped.Add(1)
		}
		for _, c := range cmds {
			if c.Name() == "eval" {
				h.t.Evals.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

func isScript(cmd goredis.Cmder) bool { return cmd.Name() == "evalsha" || cmd.Name() == "eval" }

// HoldFirstSend holds the store's next script call or pipeline until
// release is called, so that appends queue behind it; entered is closed
// once it is held. then, if not nil, runs once the held call has its
// reply, before its caller sees it.
func (s *Store) HoldFirstSend(then func()) (entered <-chan struct{}, release func()) {
	h := &holdHook{entered: make(chan struct{}), release: make(chan struct{}), then: then}
	s.rdb.AddHook(h)
	s.appendRdb.AddHook(h)
	return h.entered, sync.OnceFunc(func() { close(h.release) })
}

type holdHook struct {
	once             sync.Once
	entered, release chan struct{}
	then             func()
}

// hold reports whether this call is the one held, and holds it.
func (h *holdHook) hold() bool {
	held := false
	h.once.Do(func() {
		held = true
		close(h.entered)
		<-h.release
	})
	return held
}

func (h *holdHook) DialHook(next goredis.DialHook) goredis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return next(ctx, network, addr)
	}
}

func (h *holdHook) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if !isScript(cmd) {
			return next(ctx, cmd)
		}
		held := h.hold()
		err := next(ctx, cmd)
		if held && h.then != nil {
			h.then()
		}
		return err
	}
}

func (h *holdHook) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		if !slices.ContainsFunc(cmds, isScript) {
			return next(ctx, cmds)
		}
		held := h.hold()
		err := next(ctx, cmds)
		if held && h.then != nil {
			h.then()
		}
		return err
	}
}

// Queued is how many appends wait for a leader.
func (s *Store) Queued() int {
	return s.appends.Queued()
}

// Client returns the store's Redis client, for a test's own commands.
func (s *Store) Client() *goredis.Client { return s.rdb }

// SessionKey is the key of kind of a session, for a test to write to.
func (s *Store) SessionKey(tenant, clientID, kind string) string {
	return s.sessionKey(tenant, clientID, kind)
}

// OpenDialing opens a store whose two clients make their connections with
// dial (testenv.LosingReplyDialer, testenv.RefusingDialer), with the
// append script loaded, so that an append a test breaks is one that runs,
// not one Redis refuses for not having the script.
func OpenDialing(ctx context.Context, cfg Config, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*Store, error) {
	opts, err := goredis.ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	opts.Dialer = dial
	s, err := open(ctx, cfg, opts)
	if err != nil {
		return nil, err
	}
	if err := appendScript.Load(ctx, s.rdb).Err(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}
