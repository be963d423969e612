package dataout

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/roosthub/roost/internal/rate"
)

// A tenant's rules may take EvalShare of a node's CPU time, with up to
// EvalBurst of it saved: EvalTimeLimit bounds one message, this bounds
// a tenant's messages together. A tenant publishing 1,000 messages a
// second (the free plan's tenant_publish_rate) to rules that each took
// the whole EvalTimeLimit would otherwise keep ten cores busy; one whose
// conditions take the usual few microseconds a message uses a hundredth
// of its share.
const (
	EvalShare = 0.25 // seconds a second
	EvalBurst = time.Second
)

// ErrBudget: the tenant's rules used their share of the CPU, and the
// message could not wait for more (its context ended first).
var ErrBudget = errors.New("the tenant's rules have used their share of the CPU: try again shortly")

// Budget is one tenant's EvalShare on one node, for its RuleSets (see
// RuleSet.WithBudget). The evaluation of a message whose tenant is over
// its share waits until the share has caught up: a publisher whose rules
// overspend is slowed down, never refused while it can wait, and its
// messages are not dropped. The zero value is ready; it is safe for
// concurrent use.
type Budget struct {
	b rate.Bucket
	// now is the clock, time.Now if nil (tests set it).
	now func() time.Time
}

func (b *Budget) clock() time.Time {
	if b.now != nil {
		return b.now()
	}
	return time.Now()
}

// noWait marks a context whose evaluations do not wait for a Budget.
type noWait struct{}

// NoWait is ctx for a caller that must not wait for a tenant's Budget (the
// hub's one event publisher, shared by every tenant): over its share, the
// rules that evaluate fail at once with ErrBudget.
func NoWait(ctx context.Context) context.Context { return context.WithValue(ctx, noWait{}, true) }

// Wait waits until the budget is out of debt, or ctx ends first (or is
// NoWait's): then it returns ErrBudget.
func (b *Budget) Wait(ctx context.Context) error {
	d := b.b.Reserve(b.clock(), 0, EvalShare, EvalBurst.Seconds())
	if d <= 0 {
		return nil
	}
	if ctx.Value(noWait{}) != nil {
		return ErrBudget
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return ErrBudget
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ErrBudget
	}
}

// Spend takes d from the budget.
func (b *Budget) Spend(d time.Duration) {
	b.b.Reserve(b.clock(), d.Seconds(), EvalShare, EvalBurst.Seconds())
}

// Budgets is each tenant's Budget in one process, for the rules its
// requests compile and test there (the API's rules/test and new rules,
// the console's forms): a viewer key asking for tests as fast as it can,
// or an admin making rules, gets a quarter of a core for its tenant, not
// the process's. The zero value is ready; it is safe for concurrent use.
type Budgets struct {
	mu sync.Mutex
	m  map[string]*Budget
}

// Of returns the tenant's budget.
func (b *Budgets) Of(tenant string) *Budget {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil || len(b.m) >= 10_000 {
		b.m = map[string]*Budget{} // forgets what was spent: forgives, never refuses more
	}
	if b.m[tenant] == nil {
		b.m[tenant] = new(Budget)
	}
	return b.m[tenant]
}
