package broker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/roosthub/roost/broker/store"
)

// retryID names the queue where a destination's worker keeps the retry of
// the batch at the head of its outbox (see retryState), beside outboxID
// and deadID. It holds one message while a batch is retried and none
// otherwise. Hubs that predate it never read it: it needs nothing of the
// back-ends but a queue, so the store's format is unchanged.
func retryID(dest string) string { return "\x00retry:" + dest }

// retryState is the retry of the batch at the head of an outbox: the
// messages numbered from from to to (those of them still in the outbox),
// first tried at first, attempts times so far. The worker keeps it in
// the store while the batch is retried, so that a restart neither moves
// the retry horizon (first + ROOST_WEBHOOK_RETRY_HORIZON) nor lets the
// messages queued behind the batch join it. The zero value is no retry.
type retryState struct {
	first    time.Time
	attempts int
	from, to uint64
	// seq numbers the message in the retryID queue that holds this
	// state; 0 when none does.
	seq uint64
}

// retrying reports whether a batch is being retried.
func (r *retryState) retrying() bool { return r.to != 0 }

// encode is the stored form: the first attempt is the message's Created
// time, the rest its payload.
func (r *retryState) encode() store.Message {
	return store.Message{Created: r.first, Payload: fmt.Appendf(nil, "%d %d %d", r.from, r.to, r.attempts)}
}

func decodeRetry(m store.Queued) (retryState, error) {
	r := retryState{first: m.Created, seq: m.Seq}
	if _, err := fmt.Sscanf(string(m.Payload), "%d %d %d", &r.from, &r.to, &r.attempts); err != nil {
		return retryState{}, fmt.Errorf("retry record %q: %w", m.Payload, err)
	}
	if r.first.IsZero() || r.from == 0 || r.to < r.from || r.attempts < 1 {
		return retryState{}, fmt.Errorf("retry record %q at %v: out of range", m.Payload, m.Created)
	}
	return r, nil
}

// retryStore keeps a destination's retryState in the session store.
type retryStore struct {
	st     SessionStore
	tenant string
	id     string // retryID(destination)
	epoch  uint64
	log    *slog.Logger
}

// load claims the destination's retry queue (fencing an earlier worker's
// writes to it) and returns the retry it holds, if any. Records left by a
// worker that stopped between writing a new record and deleting the old
// one are deleted; the newest is the state.
func (rs *retryStore) load(ctx context.Context) (retryState, error) {
	epoch, err := rs.st.Claim(ctx, rs.tenant, rs.id)
	if err != nil {
		return retryState{}, err
	}
	rs.epoch = epoch
	qs, err := rs.st.Read(ctx, rs.tenant, rs.id, 0, 16)
	if err != nil || len(qs) == 0 {
		return retryState{}, err
	}
	last := qs[len(qs)-1]
	if len(qs) > 1 {
		if err := rs.st.Ack(ctx, rs.tenant, rs.id, epoch, seqsOf(qs[:len(qs)-1])); err != nil {
			return retryState{}, err
		}
	}
	r, err := decodeRetry(last)
	if err != nil {
		rs.log.Warn("retry record unreadable: the batch is tried as new", "err", err)
		return retryState{}, rs.st.Ack(ctx, rs.tenant, rs.id, epoch, []uint64{last.Seq})
	}
	return r, nil
}

// save writes r, then deletes every other record: a stop in between
// leaves both, and load keeps the newer. Appending is not fenced (see
// store.ErrFenced), so a worker that another has superseded may still
// add a record after the owner's load; the owner's deletions are, and
// they remove such a record at its next save or clear, where deleting
// only the record it replaces would leave it for a later load to take
// as the newest.
func (rs *retryStore) save(ctx context.Context, r *retryState) error {
	seqs, err := rs.st.Append(ctx, rs.tenant, []store.Item{{ClientID: rs.id, Message: r.encode()}}, store.Receipt{})
	if err != nil {
		return err
	}
	r.seq = seqs[0]
	return rs.prune(ctx, r.seq)
}

// clear deletes r's record, if it has one, with any other, and resets r:
// the batch left the outbox (delivered, dead or dropped). Without a record
// (a batch delivered at its first attempt, the common case) it costs
// nothing.
func (rs *retryStore) clear(ctx context.Context, r *retryState) error {
	seq := r.seq
	*r = retryState{}
	if seq == 0 {
		return nil
	}
	if err := rs.prune(ctx, 0); err != nil {
		r.seq = seq // deleted at the next clear
		return err
	}
	return nil
}

// prune deletes the records of the retry queue but keep's, under the
// worker's claim: ErrFenced once another worker has claimed the queue,
// when there is a record to delete (the back-ends check the claim of a
// deletion of nothing only in the memory store).
func (rs *retryStore) prune(ctx context.Context, keep uint64) error {
	qs, err := rs.st.Read(ctx, rs.tenant, rs.id, 0, 16)
	if err != nil {
		return err
	}
	stale := make([]uint64, 0, len(qs))
	for _, q := range qs {
		if q.Seq != keep {
			stale = append(stale, q.Seq)
		}
	}
	return rs.st.Ack(ctx, rs.tenant, rs.id, rs.epoch, stale)
}

// batchOf cuts what was read from the head of the outbox down to the
// batch being retried: messages queued behind it wait for it, whether
// they came before or after a restart. Messages of the batch that
// drop_oldest removed meanwhile are gone from it. When none of the batch
// is left (all dropped), or r does not describe the head (a record that
// outlived its batch), the retry is over: ok is false, and msgs are a new
// batch.
func (r *retryState) batchOf(msgs []store.Queued) (batch []store.Queued, ok bool) {
	if !r.retrying() || len(msgs) == 0 || msgs[0].Seq < r.from || msgs[0].Seq > r.to {
		return msgs, false
	}
	n := 0
	for n < len(msgs) && msgs[n].Seq <= r.to {
		n++
	}
	return msgs[:n], true
}

func seqsOf(qs []store.Queued) []uint64 {
	seqs := make([]uint64, len(qs))
	for i, m := range qs {
		seqs[i] = m.Seq
	}
	return seqs
}
