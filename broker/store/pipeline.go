package store

import "context"

// Pending is an append a store took in its order, whose outcome is to
// come: Wait waits for it, and returns what Append would have.
type Pending interface {
	Wait() ([]uint64, error)
}

// Pipeliner is a store that takes an append while the one before it is
// still being made, keeping them in order. AppendAfter returns once the
// append is in the store's order: it is numbered after prev (and after
// every append taken before it), is durable no sooner than prev, and if
// prev failed it fails too, unwritten. prev is nil, or a Pending of the
// same store's. An error means the append was not taken.
type Pipeliner interface {
	AppendAfter(ctx context.Context, tenant string, items []Item, prev Pending) (Pending, error)
}
