package dataout

import "time"

// Mechanism is mechanism, for the tests' consumers.
var Mechanism = mechanism

// NewBudgetAt is a Budget on the clock now.
func NewBudgetAt(now func() time.Time) *Budget { return &Budget{now: now} }

// LowerMaxBuilt makes MaxBuilt n bytes until the test ends, so that a
// test reaches it in a few calls, well within the time limit.
func LowerMaxBuilt(t interface{ Cleanup(func()) }, n int) {
	maxBuilt = n
	t.Cleanup(func() { maxBuilt = MaxBuilt })
}

// RaiseEvalTimeLimit gives evaluations d until the test ends: a test of
// another bound is not cut short by the time limit on a busy machine.
func RaiseEvalTimeLimit(t interface{ Cleanup(func()) }, d time.Duration) {
	evalTimeLimit = d
	t.Cleanup(func() { evalTimeLimit = EvalTimeLimit })
}

// SameCompiled reports whether two rules share their compiled condition
// and projection.
func SameCompiled(a, b *Rule) bool { return a.cond == b.cond && a.proj == b.proj }
