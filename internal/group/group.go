// Package group makes one call for many callers: the group commit of the
// session stores' appends, where the call is a synced write or a round
// trip, and its cost, shared, is most of what an append costs.
package group

import (
	"context"
	"errors"
	"slices"
	"sync"
)

// ErrShut is what Do returns once Shut was called.
var ErrShut = errors.New("group: shut")

// Commit calls commit for groups of the values its callers give Do. The
// leader is a caller, not a goroutine of Commit's: a value that finds no
// call in progress is committed at once, alone, on its caller's
// goroutine, without handing it to another and waiting to be woken back.
// Values that come during a call queue; once the leader's call returns
// it hands the lead to the first of them, which commits all that queued
// (up to Max), and returns. A value is committed in one call, with the
// values queued before it in the same call or an earlier one.
//
// The zero Commit is ready to use; Max 0 is no bound.
type Commit[T any] struct {
	// Max bounds how many values one call takes.
	Max int

	mu      sync.Mutex // guards the rest
	queue   []*waiter[T]
	leading bool
	waiting int // groups committed whose wait (DoSplit) has not returned
	shut    bool
	idle    sync.Cond // on mu, broadcast when leading or a wait ends
}

type waiter[T any] struct {
	v T
	// turn, for a value that waits for a leader, receives false once it
	// is committed, true when its caller is to lead.
	turn chan bool
}

// Do queues v and returns once commit was called with a group holding
// it: what became of v is for commit to record in it. commit is called
// by one caller at a time, with the values in the order they were queued.
// A value still waiting in the queue when ctx ends is taken out of it,
// and Do returns ctx's error; once a leader has taken it, its commit is
// awaited whatever ctx says. After Shut, Do returns ErrShut.
func (c *Commit[T]) Do(ctx context.Context, v T, commit func([]T)) error {
	return c.DoSplit(ctx, v, func(vs []T) func() {
		commit(vs)
		return nil
	})
}

// DoSplit is Do for a call in two parts: commit, made with the lead, and
// the wait it returns (nil for none), made after the lead is handed on.
// A store whose write is ordered once queued but durable only later (a
// log write, then its fsync) has the next group queued behind it while
// it waits, rather than only once it is durable: the disk goes from one
// group's sync to the next without waiting for a leader between them.
// DoSplit returns once the wait of its value's group returned (groups'
// waits may return out of order, as the store's syncs allow); Shut waits
// for the waits too.
func (c *Commit[T]) DoSplit(ctx context.Context, v T, commit func([]T) func()) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w := &waiter[T]{v: v}
	c.mu.Lock()
	if c.shut {
		c.mu.Unlock()
		return ErrShut
	}
	c.queue = append(c.queue, w)
	if c.leading {
		w.turn = make(chan bool, 1)
		c.mu.Unlock()
		var lead bool
		select {
		case lead = <-w.turn:
		case <-ctx.Done():
			if c.withdraw(w) {
				return ctx.Err()
			}
			lead = <-w.turn
		}
		if !lead {
			return nil
		}
	} else {
		c.leading = true
		c.mu.Unlock()
	}
	c.lead(w, commit)
	return nil
}

// withdraw takes w out of the queue if no leader has taken it nor handed
// it the lead; false if one has (its turn comes).
func (c *Commit[T]) withdraw(w *waiter[T]) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.queue, w)
	if i < 0 || len(w.turn) > 0 {
		return false
	}
	c.queue = slices.Delete(c.queue, i, i+1)
	return true
}

// lead commits the values queued, own among them (a leader is always the
// first queued: it found none before it, or was handed the lead as the
// first), then hands the lead to the first value queued meanwhile, if
// any. c.leading is true.
func (c *Commit[T]) lead(own *waiter[T], commit func([]T) func()) {
	c.mu.Lock()
	n := len(c.queue)
	if c.Max > 0 {
		n = min(n, c.Max)
	}
	ws := c.queue[:n:n]
	c.queue = c.queue[n:]
	if len(c.queue) == 0 {
		c.queue = nil // the backing array is not kept growing
	}
	c.mu.Unlock()

	vs := make([]T, len(ws))
	for i, w := range ws {
		vs[i] = w.v
	}
	wait := commit(vs)
	if wait == nil {
		c.done(ws, own)
	}
	c.mu.Lock()
	if wait != nil {
		c.waiting++
	}
	if len(c.queue) > 0 {
		c.queue[0].turn <- true
	} else {
		c.leading = false
		c.idle.Broadcast()
	}
	c.mu.Unlock()
	if wait == nil {
		return
	}
	wait()
	c.done(ws, own)
	c.mu.Lock()
	c.waiting--
	c.idle.Broadcast()
	c.mu.Unlock()
}

// done tells the callers of ws but own that their values are committed.
func (c *Commit[T]) done(ws []*waiter[T], own *waiter[T]) {
	for _, w := range ws {
		if w != own {
			w.turn <- false
		}
	}
}

// Queued is how many values wait for a leader.
func (c *Commit[T]) Queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// Shut makes every later Do fail with ErrShut, and waits until the
// values queued before it are committed.
func (c *Commit[T]) Shut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idle.L == nil {
		c.idle.L = &c.mu
	}
	c.shut = true
	for c.leading || c.waiting > 0 {
		c.idle.Wait()
	}
}
