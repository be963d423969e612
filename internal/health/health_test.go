package health

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCacheShares: 200 callers at once cause one check; its answer, a
// failure too, serves until ttl has passed, then the next caller checks
// again; a caller whose context ended does not make the answer a failure.
func TestCacheShares(t *testing.T) {
	var checks atomic.Int32
	var fail atomic.Bool
	now := time.Unix(1_000_000, 0)
	var mu sync.Mutex
	c := Cache(func(ctx context.Context) error {
		checks.Add(1)
		time.Sleep(10 * time.Millisecond) // the others arrive meanwhile
		if err := ctx.Err(); err != nil {
			return err
		}
		if fail.Load() {
			return errors.New("down")
		}
		return nil
	}, time.Second, time.Second)
	c.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			if err := c.Check(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := checks.Load(); n != 1 {
		t.Fatalf("200 callers at once: %d checks, want 1", n)
	}
	fail.Store(true)
	advance(999 * time.Millisecond)
	if err := c.Check(context.Background()); err != nil || checks.Load() != 1 {
		t.Fatalf("within ttl: %v after %d checks, want the first answer", err, checks.Load())
	}
	advance(time.Millisecond)
	if err := c.Check(context.Background()); err == nil || checks.Load() != 2 {
		t.Fatalf("after ttl: %v after %d checks, want a new check's failure", err, checks.Load())
	}
	if err := c.Check(context.Background()); err == nil || checks.Load() != 2 {
		t.Fatalf("a failure is shared too: %v after %d checks", err, checks.Load())
	}
	fail.Store(false)
	advance(time.Second)
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Check(gone); err != nil {
		t.Errorf("a caller that went away: %v, want the check's own answer", err)
	}
}
