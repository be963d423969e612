package pebble_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/broker/store"

	"github.com/roosthub/roost/broker/store/pebble"
	"github.com/roosthub/roost/broker/store/storetest"
)

func TestPebble(t *testing.T) {
	for name, interval := range map[string]time.Duration{"sync=always": 0, "sync=interval": time.Millisecond} {
		t.Run(name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) (storetest.Store, func() storetest.Store) {
				dir := t.TempDir()
				open := func() storetest.Store {
					s, err := pebble.New(pebble.Config{Dir: dir, SyncInterval: interval})
					if err != nil {
						t.Fatal(err)
					}
					return s
				}
				s := open()
				t.Cleanup(func() { s.Close() })
				return s, open
			})
		})
	}
}

// TestSyncIntervalSurvivesKill: with a sync interval, an append that
// returned is in the log file, though not fsynced: a copy of the store's
// directory taken while it runs (what the files hold when the process is
// killed: the page cache) opens with the message. The interval is an
// hour, so no fsync has been made; Pebble's NoSync writes would fail this
// (they wait in the process's memory for a block to fill).
func TestSyncIntervalSurvivesKill(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := pebble.New(pebble.Config{Dir: dir, SyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	item := store.Item{ClientID: "outbox", Message: store.Message{Topic: "t", Payload: []byte("kept"), QoS: 1, Created: time.Now()}}
	for range 3 {
		if _, err := s.Append(ctx, "acme", []store.Item{item}, store.Receipt{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.WALSyncs(); n != 0 {
		t.Fatalf("got %d fsyncs of the log within the hour's interval, want 0 (the test copies unsynced files)", n)
	}
	killed := copyDir(t, dir)
	after, err := pebble.New(pebble.Config{Dir: killed})
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	got, err := after.Read(ctx, "acme", "outbox", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || string(got[2].Message.Payload) != "kept" {
		t.Fatalf("after the kill: got %d messages (%+v), want the 3 appended", len(got), got)
	}
}

// TestSyncIntervalLoop: the loop fsyncs the log after each write.
func TestSyncIntervalLoop(t *testing.T) {
	ctx := context.Background()
	s, err := pebble.New(pebble.Config{Dir: t.TempDir(), SyncInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	item := store.Item{ClientID: "c", Message: store.Message{Topic: "t", Payload: []byte("x"), QoS: 1, Created: time.Now()}}
	for i := range 2 {
		before := s.WALSyncs()
		if _, err := s.Append(ctx, "acme", []store.Item{item}, store.Receipt{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.After(10 * time.Second)
		for s.WALSyncs() == before {
			select {
			case <-s.WALSynced():
			case <-deadline:
				t.Fatalf("append %d: the log was not fsynced within 10s at a 1ms interval", i)
			}
		}
	}
}

// TestAppendsAroundClose: appends racing each other (more than one commit
// takes) and the store's Close each either return their numbers, under
// which the reopened store has their messages, or fail with ErrClosed; and
// Close returns once those that were queued are written.
func TestAppendsAroundClose(t *testing.T) {
	const appends = 2000
	ctx := context.Background()
	dir := t.TempDir()
	s, err := pebble.New(pebble.Config{Dir: dir, SyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	seqs := make([]uint64, appends)
	errs := make([]error, appends)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range appends {
		wg.Go(func() {
			<-start
			item := store.Item{ClientID: "c", Message: store.Message{Topic: "t", Payload: fmt.Appendf(nil, "%d", i), QoS: 1, Created: time.Now()}}
			got, err := s.Append(ctx, "acme", []store.Item{item}, store.Receipt{})
			errs[i] = err
			if err == nil {
				seqs[i] = got[0]
			}
		})
	}
	close(start)
	// Close once some appends are written, while others still come.
	for {
		qs, err := s.Read(ctx, "acme", "c", 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(qs) > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	after, err := pebble.New(pebble.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	qs, err := after.Read(ctx, "acme", "c", 0, appends+1)
	if err != nil {
		t.Fatal(err)
	}
	bySeq := map[uint64]string{}
	for _, q := range qs {
		bySeq[q.Seq] = string(q.Payload)
	}
	written := 0
	for i, err := range errs {
		switch {
		case errors.Is(err, store.ErrClosed):
		case err != nil:
			t.Fatalf("append %d: got %v, want its numbers or ErrClosed", i, err)
		case bySeq[seqs[i]] != fmt.Sprint(i):
			t.Fatalf("append %d: message %d holds %q, want %q", i, seqs[i], bySeq[seqs[i]], fmt.Sprint(i))
		default:
			written++
		}
	}
	t.Logf("%d written, %d refused", written, appends-written)
	if written != len(qs) {
		t.Fatalf("the store holds %d messages, want the %d appends that returned numbers", len(qs), written)
	}
	if _, err := s.Append(ctx, "acme", nil, store.Receipt{}); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("append after Close: got %v, want ErrClosed", err)
	}
}

// copyDir copies a store's files (not its lock) to a new directory.
func copyDir(t *testing.T, dir string) string {
	t.Helper()
	to := t.TempDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "LOCK" {
			continue
		}
		src, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		dst, err := os.Create(filepath.Join(to, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(dst, src); err != nil {
			t.Fatal(err)
		}
		src.Close()
		dst.Close()
	}
	return to
}
