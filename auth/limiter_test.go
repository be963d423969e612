package auth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// openTallies is a new, migrated store at databaseURL ("": SQLite in a
// temporary directory), whose tallies limiters share.
func openTallies(t *testing.T, databaseURL string) *tenants.Store {
	t.Helper()
	ctx := context.Background()
	dir := ""
	if databaseURL == "" {
		dir = t.TempDir()
	}
	st, err := tenants.Open(ctx, databaseURL, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return st
}

// testIDKey keys the ids of shared tallies in tests.
var testIDKey = tallyKey([]byte("a signing key of at least 32 bytes."))

// onEveryLimiter runs a limiter test on memory, and on tallies shared in
// SQLite and in Postgres.
func onEveryLimiter(t *testing.T, test func(t *testing.T, newLimiter func(now func() time.Time) *limiter)) {
	t.Run("memory", func(t *testing.T) {
		test(t, func(now func() time.Time) *limiter { return newLimiter(now, nil, nil, nil) })
	})
	t.Run("sqlite", func(t *testing.T) {
		st := openTallies(t, "")
		test(t, func(now func() time.Time) *limiter { return newLimiter(now, st, testIDKey, nil) })
	})
	t.Run("postgres", func(t *testing.T) {
		st := openTallies(t, testenv.PostgresURL(t))
		test(t, func(now func() time.Time) *limiter { return newLimiter(now, st, testIDKey, nil) })
	})
}

// TestReserveIsAllOrNothing: an attempt is counted against all its keys or
// none, and parallel attempts get exactly the free ones.
func TestReserveIsAllOrNothing(t *testing.T) {
	onEveryLimiter(t, func(t *testing.T, newLimiter func(now func() time.Time) *limiter) {
		clk := testenv.NewClock(time.Now())
		l := newLimiter(clk.Now)
		b := budget{name: "b", free: 3, perHour: 100}
		tight := budget{name: "tight", free: 1, perHour: 100}
		if _, wait := l.reserve(charge{b, "x"}, charge{tight, "y"}); wait != 0 {
			t.Fatal("first attempt refused")
		}
		if _, wait := l.reserve(charge{b, "x"}, charge{tight, "y"}); wait == 0 {
			t.Fatal("second attempt on tight passed")
		}
		// The refused attempt counted nothing against b: two free ones are left.
		for i := range 2 {
			if _, wait := l.reserve(charge{b, "x"}); wait != 0 {
				t.Fatalf("free attempt %d on b refused: %v", i+2, wait)
			}
		}
		if _, wait := l.reserve(charge{b, "x"}); wait != time.Second {
			t.Errorf("the attempt after the free ones: wait %v, want 1s", wait)
		}

		var wg sync.WaitGroup
		var mu sync.Mutex
		passed := 0
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, wait := l.reserve(charge{b, "parallel"}); wait == 0 {
					mu.Lock()
					passed++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if passed != 3 {
			t.Errorf("%d of 50 parallel attempts passed, want the 3 free ones", passed)
		}
	})
}

// TestRefund: a refunded attempt leaves nothing behind; forgiving ends a
// streak; the hourly bound counts what was not refunded.
func TestRefund(t *testing.T) {
	onEveryLimiter(t, func(t *testing.T, newLimiter func(now func() time.Time) *limiter) {
		clk := testenv.NewClock(time.Now())
		l := newLimiter(clk.Now)
		b := budget{name: "b", free: 2, perHour: 5}
		for range 10 {
			tk, wait := l.reserve(charge{b, "ok"})
			if wait != 0 {
				t.Fatal("an attempt that is always refunded was refused")
			}
			tk.refund()
		}
		l.reserve(charge{b, "k"})
		l.reserve(charge{b, "k"})
		if l.wait(charge{b, "k"}) == 0 {
			t.Fatal("two failures did not start the wait")
		}
		clk.Advance(time.Second)
		tk, _ := l.reserve(charge{b, "k"})
		tk.refund(b) // a success forgives the streak
		if w := l.wait(charge{b, "k"}); w != 0 {
			t.Errorf("after a forgiven success: wait %v, want 0", w)
		}
		l.reserve(charge{b, "k"})
		clk.Advance(3 * time.Second)
		l.reserve(charge{b, "k"})
		clk.Advance(3 * time.Second)
		l.reserve(charge{b, "k"})
		if w := l.wait(charge{b, "k"}); w < 50*time.Minute {
			t.Errorf("after five failures in the hour: wait %v, want the rest of the hour", w)
		}
	})
}

// TestSteadyRateNeverEscalates: a budget without free attempts is an
// hourly count only: attempts at a steady rate under it never wait, however
// long they go on (a streak there would grow without end).
func TestSteadyRateNeverEscalates(t *testing.T) {
	onEveryLimiter(t, func(t *testing.T, newLimiter func(now func() time.Time) *limiter) {
		clk := testenv.NewClock(time.Now())
		l := newLimiter(clk.Now)
		b := budget{name: "total", perHour: 10}
		for i := range 100 {
			if _, wait := l.reserve(charge{b, ""}); wait != 0 {
				t.Fatalf("attempt %d at 9 an hour waited %v", i, wait)
			}
			clk.Advance(7 * time.Minute)
		}
	})
}

// TestTrustLapses: an address vouched for by a sign-in stays trusted for
// 30 days.
func TestTrustLapses(t *testing.T) {
	onEveryLimiter(t, func(t *testing.T, newLimiter func(now func() time.Time) *limiter) {
		clk := testenv.NewClock(time.Now())
		l := newLimiter(clk.Now)
		l.trust("k")
		if !l.isTrusted("k") || l.isTrusted("other") {
			t.Fatal("trust not recorded, or given to another key")
		}
		clk.Advance(31 * 24 * time.Hour)
		if l.isTrusted("k") {
			t.Error("trust outlived 30 days")
		}
	})
}

// TestTalliesShared: limiters sharing the database (two control-plane
// processes) count against one budget, and a limiter started afresh (a
// restart) keeps what was counted and who signed in; another key is
// untouched.
func TestTalliesShared(t *testing.T) {
	for name, url := range map[string]func(*testing.T) string{
		"sqlite":   func(*testing.T) string { return "" },
		"postgres": func(t *testing.T) string { return testenv.PostgresURL(t) },
	} {
		t.Run(name, func(t *testing.T) {
			st := openTallies(t, url(t))
			clk := testenv.NewClock(time.Now())
			a, b := newLimiter(clk.Now, st, testIDKey, nil), newLimiter(clk.Now, st, testIDKey, nil)
			acct := budget{name: "acct", free: 4, perHour: 100}
			for i := range 4 {
				l := a
				if i%2 == 1 {
					l = b
				}
				if _, wait := l.reserve(charge{acct, "victim"}); wait != 0 {
					t.Fatalf("free attempt %d refused: %v", i+1, wait)
				}
			}
			for _, l := range []*limiter{a, b, newLimiter(clk.Now, st, testIDKey, nil)} {
				if _, wait := l.reserve(charge{acct, "victim"}); wait != time.Second {
					t.Errorf("after 4 free attempts over two processes: wait %v, want 1s", wait)
				}
			}
			if _, wait := b.reserve(charge{acct, "other"}); wait != 0 {
				t.Errorf("another key waits %v", wait)
			}
			a.trust("victim\x00198.51.100.7")
			if !newLimiter(clk.Now, st, testIDKey, nil).isTrusted("victim\x00198.51.100.7") {
				t.Error("a sign-in noted by one process is not known to another")
			}
			if b.isTrusted("victim\x00203.0.113.9") {
				t.Error("a pair that never signed in is trusted")
			}
		})
	}
}

// TestTalliesParallelProcesses: parallel attempts through two limiters
// on one Postgres database, each with its own pool (two processes), get
// exactly the free ones between them.
func TestTalliesParallelProcesses(t *testing.T) {
	url := testenv.PostgresURL(t)
	clk := testenv.NewClock(time.Now())
	ls := []*limiter{newLimiter(clk.Now, openTallies(t, url), testIDKey, nil), newLimiter(clk.Now, openTallies(t, url), testIDKey, nil)}
	b := budget{name: "b", free: 5, perHour: 100}
	var wg sync.WaitGroup
	var mu sync.Mutex
	passed := 0
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, wait := ls[i%2].reserve(charge{b, "k"}); wait == 0 {
				mu.Lock()
				passed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if passed != 5 {
		t.Errorf("%d of 40 parallel attempts through two processes passed, want the 5 free ones", passed)
	}
}

// failingTallies is a database that cannot be reached.
type failingTallies struct{}

var errUnreachable = errors.New("database unreachable")

func (failingTallies) UpdateTallies(context.Context, []string, func(map[string]*tenants.Tally)) error {
	return errUnreachable
}
func (failingTallies) Trust(context.Context, string, time.Time) error { return errUnreachable }
func (failingTallies) TrustedSince(context.Context, time.Time) (map[string]time.Time, error) {
	return nil, errUnreachable
}
func (failingTallies) PruneTallies(context.Context, time.Time, time.Duration) error {
	return errUnreachable
}

// TestTalliesUnreachable: while the database cannot be reached, attempts
// are refused for a second: counted nowhere else, which would hand a
// guesser each process's budget afresh (the work they guard needs the
// database anyway).
func TestTalliesUnreachable(t *testing.T) {
	clk := testenv.NewClock(time.Now())
	l := newLimiter(clk.Now, failingTallies{}, testIDKey, nil)
	b := budget{name: "b", free: 2, perHour: 100}
	for range 5 {
		if _, wait := l.reserve(charge{b, "k"}); wait != time.Second {
			t.Fatalf("an attempt while the database is unreachable: wait %v, want 1s", wait)
		}
	}
	l.trust("pair")
	if l.isTrusted("other") {
		t.Error("a pair that never signed in is trusted")
	}
}

// slowTallies is a database each update of which takes a while, and which
// fails updates past eight at once (a pool, a lock queue run out).
type slowTallies struct {
	*tenants.Store
	n, most atomic.Int32
}

func (s *slowTallies) UpdateTallies(ctx context.Context, ids []string, fn func(map[string]*tenants.Tally)) error {
	defer s.n.Add(-1)
	n := s.n.Add(1)
	for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
	}
	if n > 8 {
		return context.DeadlineExceeded
	}
	time.Sleep(time.Millisecond)
	return s.Store.UpdateTallies(ctx, ids, fn)
}

// TestTalliesBurstOnOneKey: 200 attempts at once on one key through one
// process get exactly its free ones, and wait their turn in the process,
// not in the database: none of them fails there (each that did would have
// been counted elsewhere, or refused; see TestTalliesUnreachable).
func TestTalliesBurstOnOneKey(t *testing.T) {
	st := &slowTallies{Store: openTallies(t, "")}
	l := newLimiter(testenv.NewClock(time.Now()).Now, st, testIDKey, nil)
	b := budget{name: "b", free: 5, perHour: 100}
	var wg sync.WaitGroup
	var passed, oneSecond atomic.Int32
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch _, w := l.reserve(charge{b, "k"}); w {
			case 0:
				passed.Add(1)
			case time.Second:
				oneSecond.Add(1)
			}
		}()
	}
	wg.Wait()
	if passed.Load() != 5 {
		t.Errorf("%d of 200 attempts at once passed, want the 5 free ones", passed.Load())
	}
	if n := st.most.Load(); n != 1 {
		t.Errorf("%d updates of one key ran at once in one process, want 1", n)
	}
	if _, w := l.reserve(charge{b, "k"}); w != time.Second {
		t.Errorf("the attempt after the free ones: wait %v, want 1s", w)
	}
}

// TestHeldWaitIsPerKey: a key held back by a refused attempt is held for
// its own wait, not the longest of the attempt's keys (a stranger whose
// address waits an hour could otherwise make the account wait an hour
// too, 5 s at a time).
func TestHeldWaitIsPerKey(t *testing.T) {
	clk := testenv.NewClock(time.Now())
	l := newLimiter(clk.Now, openTallies(t, ""), testIDKey, nil)
	short, long := budget{name: "short", free: 1, perHour: 100}, budget{name: "long", perHour: 1}
	l.reserve(charge{long, "stranger"})
	l.reserve(charge{short, "victim"})
	if _, w := l.reserve(charge{short, "victim"}, charge{long, "stranger"}); w < 50*time.Minute {
		t.Fatalf("the stranger's attempt: wait %v, want the rest of the hour", w)
	}
	if _, w := l.reserve(charge{short, "victim"}); w != time.Second {
		t.Errorf("the victim's key: wait %v, want its own 1s", w)
	}
	clk.Advance(2 * time.Second)
	if _, w := l.reserve(charge{short, "victim"}); w != 0 {
		t.Errorf("the victim's key waits %v after its own 1s", w)
	}
}

// TestNetwork: an address budget's key is an IPv4 address, or the /64 of
// an IPv6 one; an (account, address) pair that signed in is trusted from
// anywhere in its /64, where an IPv6 host's privacy addresses move.
func TestNetwork(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"192.0.2.1", "192.0.2.1"},
		{"::ffff:192.0.2.1", "192.0.2.1"},
		{"2001:db8:1:2::1", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"},
		{"2001:db8:1:3::1", "2001:db8:1:3::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"::1", "::/64"},
		{"@", "@"}, // not an IP address (a Unix socket's peer): itself
		{"", ""},
	} {
		if got := network(tc.addr); got != tc.want {
			t.Errorf("network(%q) = %q, want %q", tc.addr, got, tc.want)
		}
	}
	if a, b := pair("ada@example.com", "2001:db8:1:2::1"), pair("ada@example.com", "2001:db8:1:2:a:b:c:d"); a != b {
		t.Errorf("two addresses of one /64: pairs %q and %q, want one", a, b)
	}
	if a, b := pair("ada@example.com", "2001:db8:1:2::1"), pair("ada@example.com", "2001:db8:1:3::1"); a == b {
		t.Errorf("two /64s: one pair %q, want two", a)
	}
}

// TestOperatorKeysBounded: failed operator tokens from more addresses
// than maxKeys (one attacker's IPv6 /64s) keep at most maxKeys counted in
// memory.
func TestOperatorKeysBounded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	o := NewOperator("rop_the-token", func() time.Time { return now }, nil)
	for i := range maxKeys + maxKeys/2 {
		o.Fail(fmt.Sprintf("2001:db8:%x:%x::1", i>>16, i&0xffff))
		if n := len(o.lim.keys); n > maxKeys {
			t.Fatalf("%d keys counted after %d addresses, over %d", n, i+1, maxKeys)
		}
	}
}
