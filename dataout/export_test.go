package dataout

import "time"

// Mechanism is mechanism, for the tests' consumers.
var Mechanism = mechanism

// NewBudgetAt is a Budget on the clock now.
func NewBudgetAt(now func() time.Time) *Budget { return &Budget{now: now} }
