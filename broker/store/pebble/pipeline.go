package pebble

import (
	"context"

	"github.com/roosthub/roost/broker/store"
)

var _ store.Pipeliner = (*Store)(nil)

// pending is an append queued to the writer.
type pending struct{ r *appendReq }

func (p pending) Wait() ([]uint64, error) {
	<-p.r.done
	return p.r.seqs, p.r.err
}

// AppendAfter queues an append to the writer after prev and returns once
// it is queued. The writer takes appends in the order they were queued,
// numbers them in that order and commits each in the same synced batch
// as those before it or a later one, so the append is numbered after
// prev and durable no sooner; if prev failed, it fails unwritten.
func (s *Store) AppendAfter(ctx context.Context, tenant string, items []store.Item, prev store.Pending) (store.Pending, error) {
	req := &appendReq{tenant: tenant, items: items, done: make(chan struct{})}
	if p, ok := prev.(pending); ok {
		req.after = p.r
	}
	select {
	case s.appends <- req:
		return pending{req}, nil
	case <-s.closed:
		return nil, store.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
