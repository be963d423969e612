package broker

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/broker/store/pebble"
)

// TestRetryStoreFencesStaleWorker: a worker another has superseded can
// still append a retry record (appends are not fenced), but not delete
// the owner's; the owner's next save or clear deletes the stale record, so
// a later load does not take it as the newest; and the stale worker's
// next save is refused as fenced, which stops it.
func TestRetryStoreFencesStaleWorker(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		st, err := pebble.New(pebble.Config{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		retryStoreFencesStaleWorker(t, st)
	})
	t.Run("memory", func(t *testing.T) { retryStoreFencesStaleWorker(t, memory.New()) })
}

func retryStoreFencesStaleWorker(t *testing.T, st SessionStore) {
	ctx := context.Background()
	id := retryID("hook")
	open := func() *retryStore {
		rs := &retryStore{st: st, tenant: "acme", id: id, log: slog.New(slog.DiscardHandler)}
		if _, err := rs.load(ctx); err != nil {
			t.Fatal(err)
		}
		return rs
	}
	records := func() []store.Queued {
		t.Helper()
		qs, err := st.Read(ctx, "acme", id, 0, 16)
		if err != nil {
			t.Fatal(err)
		}
		return qs
	}
	first := time.Unix(1_700_000_000, 0).UTC()
	stale, owner := open(), open() // the owner's claim supersedes the stale one's

	staleRetry := retryState{first: first, attempts: 9, from: 1, to: 5}
	// Nothing to delete: the embedded store takes the append unchecked,
	// the memory store checks the claim all the same.
	if err := stale.save(ctx, &staleRetry); err != nil && !errors.Is(err, store.ErrFenced) {
		t.Fatalf("stale worker's first save: %v", err)
	}
	ownRetry := retryState{first: first.Add(time.Minute), attempts: 1, from: 1, to: 3}
	if err := owner.save(ctx, &ownRetry); err != nil {
		t.Fatal(err)
	}
	if qs := records(); len(qs) != 1 || qs[0].Seq != ownRetry.seq {
		t.Fatalf("after the owner's save the retry queue holds %+v, want the owner's record (seq %d) alone", qs, ownRetry.seq)
	}
	if err := stale.save(ctx, &staleRetry); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("stale worker's save beside the owner's record: %v, want ErrFenced", err)
	}
	if qs := records(); len(qs) != 2 {
		t.Fatalf("retry queue %+v, want the owner's record and the stale append", qs)
	}
	if err := owner.clear(ctx, &ownRetry); err != nil {
		t.Fatal(err)
	}
	if qs := records(); len(qs) != 0 {
		t.Fatalf("after the owner's clear the retry queue holds %+v, want nothing", qs)
	}
	if r, err := open().load(ctx); err != nil || r.retrying() {
		t.Fatalf("a new worker loads %+v, %v; want no retry", r, err)
	}
}
