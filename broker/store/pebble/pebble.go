// Package pebble is the embedded session store: one Pebble database in the
// data dir for every tenant, each key prefixed by its tenant. It is the
// default for `roost serve`.
package pebble

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/internal/group"
)

// Store is a session store on Pebble.
//
// Keys (tenant slugs never contain 0x00; client ids and topics are
// length-prefixed, so no id can reach into another's range):
//
//	's' tenant 0x00 len(cid) cid            → session, JSON
//	'q' tenant 0x00 len(cid) cid seq(8, BE) → message
//	'm' tenant 0x00 len(cid) cid            → last sequence number given (8, BE)
//	'd' tenant 0x00 len(cid) cid seq(8, BE) → QoS 2 mark: packet id (2, BE), released (1)
//	'p' tenant 0x00 len(cid) cid id(2, BE)  → receipt of a publisher's QoS 2 packet id
//	'e' tenant 0x00 len(cid) cid            → the session's epoch (8, BE; see store.ErrFenced)
//	'k' tenant 0x00 len(cid) cid            → how many of the queue's messages were removed (8, BE)
//	'r' tenant 0x00 topic                    → retained message
//	'v'                                      → the format of the keys (8, BE; see formatVersion)
//
// One process holds the database, so the epochs are checked in memory: an
// owner's write holds its session's stripe from the check to the commit,
// and a claim holds it too.
//
// A queue's length is its last sequence number ('m', written with the
// messages it numbers) less the messages removed from it ('k', written
// with their deletion): every number up to the last was given to one
// message, and a removal counts only a message still there. Both are
// written in the batch that adds or removes the keys, so the length is
// exact after a crash too, and QueueInfo reads it without counting the
// queue. Only the writes that hold the session's stripe (Ack and
// DeleteSession) remove messages, so they read and write 'k' in turn.
// An older version, which ignores 'k', can leave it short after a
// rollback; QueueInfo recounts a queue whose figures contradict its keys.
type Store struct {
	db *pebble.DB

	// lowMu guards lows: per queue ('q' prefix), a sequence number below
	// which it holds no message any more. Numbers are given in order and
	// never again, so none below the first a read found comes back;
	// QueueInfo seeks from there rather than over the deletions of the
	// messages acknowledged before, which stay in the database until a
	// compaction. It reads the low before it takes its view, so the view
	// is newer than the one that found it; still, the low is only a hint
	// (see QueueInfo). DeleteSession drops the queue's low.
	lowMu sync.Mutex
	lows  map[string]uint64

	// seqMu guards seqs, the last committed sequence number per queue
	// (by 'm' key), read from the 'm' key on first use; a commit updates
	// the number in place. numbering is the commit's own (see commit).
	seqMu     sync.Mutex
	seqs      map[string]*uint64
	numbering numbering

	// fences serialise, per session (by hash), a claim with the owner's
	// writes; epochs caches the epochs read or written, under epochMu.
	fences  [64]sync.Mutex
	epochMu sync.Mutex
	epochs  map[string]uint64

	// appends group-commits Append's writes.
	appends group.Commit[*appendReq]
	closed  chan struct{}

	// wal, with a sync interval, makes the log's fsyncs; syncerDone is
	// closed when its loop has ended.
	wal        *walFS
	syncerDone chan struct{}

	closeOnce sync.Once
	closeErr  error

	// viewTaken, if set (by tests), is called once QueueInfo has taken
	// its view of the database.
	viewTaken func()
}

// Config says where the database lives and where it logs.
type Config struct {
	Dir string
	// Log receives Pebble's messages and its background errors (a failed
	// flush or compaction); nil discards them.
	Log *slog.Logger
	// SyncInterval, if above 0, is how often the write-ahead log is
	// fsynced: a write returns once it is written to the log file (in the
	// page cache, surviving the death of the process), and a crash of the
	// machine loses at most the writes of the last interval. 0 fsyncs every
	// write before it returns.
	SyncInterval time.Duration
}

// New opens (or creates) the database in cfg.Dir.
func New(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("pebble session store: no directory")
	}
	if cfg.SyncInterval < 0 {
		return nil, errors.New("pebble session store: negative sync interval")
	}
	opts := options(cfg.Log)
	var wal *walFS
	if cfg.SyncInterval > 0 {
		wal = newWALFS(vfs.Default, logOrDiscard(cfg.Log))
		opts.FS = wal
	}
	db, err := pebble.Open(cfg.Dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open session store in %s: %w", cfg.Dir, err)
	}
	if err := countRemoved(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open session store in %s: %w", cfg.Dir, err)
	}
	s := &Store{db: db, seqs: map[string]*uint64{}, epochs: map[string]uint64{}, lows: map[string]uint64{}, closed: make(chan struct{})}
	s.appends.Max = maxGroup
	if wal != nil {
		s.wal, s.syncerDone = wal, make(chan struct{})
		go func() {
			defer close(s.syncerDone)
			wal.run(cfg.SyncInterval, s.closed)
		}()
	}
	return s, nil
}

// formatVersion is the format of the keys: 1 has the 'k' keys, which a
// database written before them lacks.
const formatVersion = 1

var formatKey = []byte{'v'}

// countRemoved brings a database written before the 'k' keys to the
// format: each queue's count of removed messages is its last sequence
// number less the messages it holds. It counts every queue once, when
// the database is first opened by a version with the 'k' keys.
func countRemoved(db *pebble.DB) error {
	v, err := readUint64(db, formatKey)
	if err != nil || v >= formatVersion {
		return err
	}
	b := db.NewBatch()
	defer b.Close()
	mp := []byte{'m'}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: mp, UpperBound: upperBound(mp)})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if len(it.Value()) != 8 {
			return fmt.Errorf("damaged sequence record %q", it.Key())
		}
		last := binary.BigEndian.Uint64(it.Value())
		id := it.Key()[1:] // tenant 0x00 len(cid) cid
		qp := append([]byte{'q'}, id...)
		n, err := countKeys(db, qp)
		if err != nil {
			return err
		}
		if n > last {
			return fmt.Errorf("queue %q holds %d messages, more than its last number %d", id, n, last)
		}
		b.Set(append([]byte{'k'}, id...), binary.BigEndian.AppendUint64(nil, last-n), nil)
	}
	if err := it.Error(); err != nil {
		return err
	}
	b.Set(formatKey, binary.BigEndian.AppendUint64(nil, formatVersion), nil)
	return b.Commit(pebble.Sync)
}

// countKeys counts the keys with prefix p.
func countKeys(db *pebble.DB, p []byte) (uint64, error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: upperBound(p)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	var n uint64
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	return n, it.Error()
}

// readUint64 reads a number kept under k; 0 if there is none.
func readUint64(r pebble.Reader, k []byte) (uint64, error) {
	v, closer, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("damaged record %q", k)
	}
	return binary.BigEndian.Uint64(v), nil
}

func logOrDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}

// options are the database's options: its messages and background errors
// go to log. Pebble reports a background error through its event listener,
// which by default hands it to Infof, so it gets a handler of its own.
func options(log *slog.Logger) *pebble.Options {
	log = logOrDiscard(log)
	return &pebble.Options{Logger: logger{log}, EventListener: &pebble.EventListener{
		BackgroundError: func(err error) { log.Error("session store background error", "err", err) },
	}}
}

// logger is Pebble's logger on slog. Fatalf, which Pebble calls on a
// broken invariant, logs and panics rather than exiting the process as
// Pebble's own logger would.
type logger struct{ log *slog.Logger }

func (l logger) Infof(format string, args ...any) { l.log.Info(sprintf(format, args...)) }

// Errorf is for the Pebble versions whose Logger has it.
func (l logger) Errorf(format string, args ...any) { l.log.Error(sprintf(format, args...)) }

func (l logger) Fatalf(format string, args ...any) {
	msg := sprintf(format, args...)
	l.log.Error(msg)
	panic(msg)
}

func sprintf(format string, args ...any) string {
	return strings.TrimSuffix(fmt.Sprintf(format, args...), "\n")
}

func tenantPrefix(kind byte, tenant string) []byte {
	b := make([]byte, 0, 2+len(tenant))
	b = append(b, kind)
	b = append(b, tenant...)
	return append(b, 0)
}

// clientKey is the key of the client's record of kind; it has room for a
// number (see queueKey) without growing.
func clientKey(kind byte, tenant, clientID string) []byte {
	n := 1 + len(tenant) + 1 + binary.MaxVarintLen64 + len(clientID) + 8
	return appendClientKey(make([]byte, 0, n), kind, tenant, clientID)
}

// appendClientKey appends clientKey(kind, tenant, clientID) to b.
func appendClientKey(b []byte, kind byte, tenant, clientID string) []byte {
	b = append(b, kind)
	b = append(b, tenant...)
	b = append(b, 0)
	b = binary.AppendUvarint(b, uint64(len(clientID)))
	return append(b, clientID...)
}

func queueKey(tenant, clientID string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(clientKey('q', tenant, clientID), seq)
}

func markKey(tenant, clientID string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(clientKey('d', tenant, clientID), seq)
}

func receiptKey(tenant, clientID string, packetID uint16) []byte {
	n := 1 + len(tenant) + 1 + binary.MaxVarintLen64 + len(clientID) + 2
	return appendReceiptKey(make([]byte, 0, n), tenant, clientID, packetID)
}

// appendReceiptKey appends receiptKey(tenant, clientID, packetID) to b.
func appendReceiptKey(b []byte, tenant, clientID string, packetID uint16) []byte {
	return binary.BigEndian.AppendUint16(appendClientKey(b, 'p', tenant, clientID), packetID)
}

// upperBound is the smallest key above every key with prefix p.
func upperBound(p []byte) []byte {
	b := append([]byte(nil), p...)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return b[:i+1]
		}
	}
	return nil
}

// fence locks the session's stripe and checks the writer's epoch; the
// caller writes, then calls the returned unlock.
func (s *Store) fence(tenant, clientID string, epoch uint64) (unlock func(), err error) {
	ek := clientKey('e', tenant, clientID)
	mu := s.stripe(ek)
	mu.Lock()
	current, err := s.epoch(ek)
	if err == nil && current != epoch {
		err = store.ErrFenced
	}
	if err != nil {
		mu.Unlock()
		return nil, err
	}
	return mu.Unlock, nil
}

func (s *Store) stripe(ek []byte) *sync.Mutex {
	h := fnv.New32a()
	h.Write(ek)
	return &s.fences[h.Sum32()%uint32(len(s.fences))]
}

// epoch is a session's epoch, from the cache or the database. Called with
// the session's stripe held.
func (s *Store) epoch(ek []byte) (uint64, error) {
	s.epochMu.Lock()
	e, ok := s.epochs[string(ek)]
	s.epochMu.Unlock()
	if ok {
		return e, nil
	}
	e, err := readUint64(s.db, ek)
	if err != nil {
		return 0, err
	}
	s.epochMu.Lock()
	s.epochs[string(ek)] = e
	s.epochMu.Unlock()
	return e, nil
}

func (s *Store) Claim(_ context.Context, tenant, clientID string) (uint64, error) {
	ek := clientKey('e', tenant, clientID)
	mu := s.stripe(ek)
	mu.Lock()
	defer mu.Unlock()
	e, err := s.epoch(ek)
	if err != nil {
		return 0, err
	}
	e++
	// Not synced: one process holds the database, so no other owner can
	// act on an epoch lost in a crash; the next synced write flushes it.
	if err := s.db.Set(ek, binary.BigEndian.AppendUint64(nil, e), pebble.NoSync); err != nil {
		return 0, err
	}
	s.epochMu.Lock()
	s.epochs[string(ek)] = e
	s.epochMu.Unlock()
	return e, nil
}

func (s *Store) SaveSession(_ context.Context, tenant string, sess store.Session) error {
	v, err := json.Marshal(sess)
	if err != nil {
		return err
	}
	unlock, err := s.fence(tenant, sess.ClientID, sess.Epoch)
	if err != nil {
		return err
	}
	defer unlock()
	return s.db.Set(clientKey('s', tenant, sess.ClientID), v, pebble.Sync)
}

func (s *Store) Sessions(_ context.Context, tenant string) ([]store.Session, error) {
	p := tenantPrefix('s', tenant)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: upperBound(p)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []store.Session
	for it.First(); it.Valid(); it.Next() {
		sess, err := s.decodeSession(tenant, it.Key(), it.Value())
		if err != nil {
			return nil, err
		}
		out = append(out, sess)
	}
	return out, it.Error()
}

// Session reads the one record by its key, then the session's receipts and
// epoch: nothing else of the tenant is scanned.
func (s *Store) Session(_ context.Context, tenant, clientID string) (store.Session, bool, error) {
	k := clientKey('s', tenant, clientID)
	v, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return store.Session{}, false, nil
	}
	if err != nil {
		return store.Session{}, false, err
	}
	sess, err := s.decodeSession(tenant, k, v)
	closer.Close()
	if err != nil {
		return store.Session{}, false, err
	}
	return sess, true, nil
}

// decodeSession decodes a session record (v, kept at key k) and fills in
// its pending releases, in packet id order (the order of their keys), and
// its epoch.
func (s *Store) decodeSession(tenant string, k, v []byte) (store.Session, error) {
	var sess store.Session
	if err := json.Unmarshal(v, &sess); err != nil {
		return store.Session{}, fmt.Errorf("session %q: %w", k, err)
	}
	var err error
	if sess.PendingRelease, err = s.receipts(tenant, sess.ClientID); err != nil {
		return store.Session{}, err
	}
	ek := clientKey('e', tenant, sess.ClientID)
	mu := s.stripe(ek) // filling the cache races a claim otherwise
	mu.Lock()
	sess.Epoch, err = s.epoch(ek)
	mu.Unlock()
	if err != nil {
		return store.Session{}, err
	}
	return sess, nil
}

func (s *Store) receipts(tenant, clientID string) ([]uint16, error) {
	p := clientKey('p', tenant, clientID)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: upperBound(p)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var ids []uint16
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		ids = append(ids, binary.BigEndian.Uint16(k[len(k)-2:]))
	}
	return ids, it.Error()
}

func (s *Store) Release(_ context.Context, tenant, clientID string, epoch uint64, packetID uint16) error {
	unlock, err := s.fence(tenant, clientID, epoch)
	if err != nil {
		return err
	}
	defer unlock()
	return s.db.Delete(receiptKey(tenant, clientID, packetID), pebble.Sync)
}

// Mark is synced: the client may hold the message by that id as soon as it
// is sent.
func (s *Store) Mark(_ context.Context, tenant, clientID string, epoch, seq uint64, packetID uint16, released bool) error {
	v := binary.BigEndian.AppendUint16(nil, packetID)
	if released {
		v = append(v, 1)
	} else {
		v = append(v, 0)
	}
	unlock, err := s.fence(tenant, clientID, epoch)
	if err != nil {
		return err
	}
	defer unlock()
	return s.db.Set(markKey(tenant, clientID, seq), v, pebble.Sync)
}

// DeleteSession removes the session, its queue, its marks and its
// receipts. The queue's last sequence number and the epoch stay, so neither
// is ever reused.
//
// The queue is removed up to its last number as the database has it now,
// and that many messages counted removed: an append committed meanwhile
// (appends are not fenced) numbers its message above, and it stays, counted.
func (s *Store) DeleteSession(_ context.Context, tenant, clientID string, epoch uint64) error {
	unlock, err := s.fence(tenant, clientID, epoch)
	if err != nil {
		return err
	}
	defer unlock()
	last, err := readUint64(s.db, clientKey('m', tenant, clientID))
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	b.Delete(clientKey('s', tenant, clientID), nil)
	b.DeleteRange(queueKey(tenant, clientID, 0), queueKey(tenant, clientID, last+1), nil)
	b.Set(clientKey('k', tenant, clientID), binary.BigEndian.AppendUint64(nil, last), nil)
	for _, kind := range []byte{'d', 'p'} {
		p := clientKey(kind, tenant, clientID)
		b.DeleteRange(p, upperBound(p), nil)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return err
	}
	// The epoch stays on disk; the cache keeps only sessions that live, so
	// that client ids come and gone do not grow it. Nor do the queue's low
	// (a QueueInfo of a view before the deletion may set it again, to a
	// number still below every message) and its last number (the next
	// commit reads it from the 'm' key; one in progress sets it after).
	s.epochMu.Lock()
	delete(s.epochs, string(clientKey('e', tenant, clientID)))
	s.epochMu.Unlock()
	s.lowMu.Lock()
	delete(s.lows, string(clientKey('q', tenant, clientID)))
	s.lowMu.Unlock()
	s.seqMu.Lock()
	delete(s.seqs, string(clientKey('m', tenant, clientID)))
	s.seqMu.Unlock()
	return nil
}

// Append stores the items and returns their sequence numbers once they are
// synced to disk (with a sync interval: written to the log file, see
// Config.SyncInterval). Appends are group-committed: one caller at a time,
// the leader, takes every append waiting, numbers them in order and writes
// them in one synced batch, so a reader never sees a later number before an
// earlier one, and one fsync covers many publishers. All items of one call
// are in the same batch: a message is stored for every session it was
// meant for, or for none.
//
// The leader is a caller, not a goroutine of the store's: an append that
// finds no commit in progress commits at once, on its own goroutine,
// without handing its write to another and waiting to be woken back (two
// goroutine switches an append, the most of its cost when the log is not
// fsynced on the commit's path). Appends that come during a commit queue;
// once the leader's own append is written it hands the lead to the first
// of them, which commits all that queued, and returns (internal/group,
// which the Redis store's appends share).
//
// An append still waiting in the queue when ctx ends is taken out of it
// and fails with ctx's error; once a leader has taken it, its outcome is
// awaited whatever ctx says: it may be written already.
func (s *Store) Append(ctx context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error) {
	req := &appendReq{tenant: tenant, items: items, receipt: r}
	if err := s.appends.DoSplit(ctx, req, s.commitGroup); err != nil {
		if errors.Is(err, group.ErrShut) {
			return nil, store.ErrClosed
		}
		return nil, err
	}
	return req.seqs, req.err
}

type appendReq struct {
	tenant  string
	items   []store.Item
	receipt store.Receipt
	seqs    []uint64
	err     error
}

// maxGroup bounds how many appends one commit takes.
const maxGroup = 512

// commitGroup commits a group of appends (see Append), or fails them all.
// The lead passes on once the group's batch is in the log and the
// memtable, before its sync: the next group is written behind it while
// the disk syncs this one, and the log writer syncs the next as soon as
// this one's ends (internal/group's DoSplit). The returned wait waits for
// the sync.
func (s *Store) commitGroup(reqs []*appendReq) (wait func()) {
	b, err := s.commitOrStop(reqs)
	if err != nil {
		failAll(reqs, err)
		return nil
	}
	return func() {
		defer b.Close()
		if err := b.SyncWait(); err != nil {
			failAll(reqs, err)
		}
	}
}

func failAll(reqs []*appendReq, err error) {
	for _, r := range reqs {
		r.seqs, r.err = nil, err
	}
}

// commitOrStop commits, or stops the process if Pebble finds its log
// unwritable: it calls Fatalf (a failed write of the log is a fatal
// commit error to Pebble), whose panic the committing caller's own
// recover (a connection's, an API request's) would otherwise catch,
// leaving the lead taken and every later append waiting for ever. The
// panic is raised again on a goroutine of its own, where nothing recovers
// it, as it was when a writer goroutine of the store's committed.
func (s *Store) commitOrStop(reqs []*appendReq) (applied *pebble.Batch, err error) {
	defer func() {
		if v := recover(); v != nil {
			go func() { panic(v) }()
			select {} // the panic ends the process
		}
	}()
	return s.commit(reqs)
}

// commit numbers a group of appends and writes them in one batch, to the
// log and the memtable, and returns the batch: its SyncWait waits for the
// log's sync (or, with a sync interval, its write to the file), and the
// caller closes it then. The leader is the only goroutine that numbers,
// so seqs and numbering need no lock here; seqMu orders them with
// QueueInfo's reads.
//
// The batch is visible once applied, before its sync, as with Pebble's
// synced Commit (which publishes it, then waits): what a reader sends
// before the sync and a crash loses was not acknowledged to its
// publisher, who sends it again.
func (s *Store) commit(reqs []*appendReq) (applied *pebble.Batch, err error) {
	b := s.db.NewBatch()
	total := 0
	for _, r := range reqs {
		total += len(r.items)
	}
	seqs := make([]uint64, total) // every request's, end to end
	g := &s.numbering
	g.reset()
	k, v := g.scratch[:0], g.value[:0] // each key and value in turn: the batch copies them
	defer func() {
		if cap(v) > 64<<10 {
			v = nil // a large message's buffer is not kept
		}
		g.scratch, g.value = k, v
	}()
	s.seqMu.Lock()
	for _, r := range reqs {
		if r.receipt.ClientID != "" {
			k = appendReceiptKey(k[:0], r.tenant, r.receipt.ClientID, r.receipt.PacketID)
			b.Set(k, nil, nil)
		}
		r.seqs, seqs = seqs[:len(r.items):len(r.items)], seqs[len(r.items):]
		for i, it := range r.items {
			k = appendClientKey(k[:0], 'm', r.tenant, it.ClientID)
			q := g.find(k)
			if q < 0 {
				known, last := s.seqs[string(k)], uint64(0)
				if known != nil {
					last = *known
				} else if last, err = readUint64(s.db, k); err != nil {
					s.seqMu.Unlock()
					b.Close()
					return nil, err
				}
				q = g.add(k, last, known)
			}
			g.lasts[q]++
			r.seqs[i] = g.lasts[q]
			if v, err = it.Message.AppendBinary(v[:0]); err != nil {
				s.seqMu.Unlock()
				b.Close()
				return nil, err
			}
			k[0] = 'q' // the message's key is the 'm' key's, kind apart, and its number
			k = binary.BigEndian.AppendUint64(k, g.lasts[q])
			b.Set(k, v, nil)
		}
	}
	s.seqMu.Unlock()
	var last8 [8]byte
	for q, last := range g.lasts {
		binary.BigEndian.PutUint64(last8[:], last)
		b.Set(g.key(q), last8[:], nil)
	}
	// A failed apply leaves the batch with Pebble (it may still be in its
	// commit queue): not closed, not reused.
	if err := s.db.ApplyNoSyncWait(b, pebble.Sync); err != nil {
		return nil, err
	}
	s.seqMu.Lock()
	for q, last := range g.lasts {
		if p := g.known[q]; p != nil {
			*p = last
		} else {
			s.seqs[string(g.key(q))] = &last
		}
	}
	s.seqMu.Unlock()
	return b, nil
}

// numbering holds the last numbers a commit gives, per queue: the
// queue's 'm' key, its last number and the store's entry for it in seqs,
// if it has one. The store keeps one, for the commit in progress (one at
// a time), so that numbering a queue the store knows allocates nothing.
type numbering struct {
	keys  []byte // the 'm' keys, end to end
	ends  []int  // where each ends in keys
	lasts []uint64
	known []*uint64
	// scratch and value are commit's buffers for the keys and the
	// values it writes.
	scratch, value []byte
	// index finds a key's place once a commit numbers more than
	// scanQueues queues.
	index map[string]int
}

// scanQueues is how many queues numbering finds by comparing keys in
// turn, before it indexes them.
const scanQueues = 8

// reset empties n for the next commit; it keeps its arrays, unless a
// commit to many queues made them large.
func (n *numbering) reset() {
	if cap(n.keys) > 64<<10 || cap(n.ends) > 1024 {
		*n = numbering{}
	}
	n.keys, n.ends, n.lasts, n.index = n.keys[:0], n.ends[:0], n.lasts[:0], nil
	clear(n.known) // let go of seqs's entries
	n.known = n.known[:0]
}

func (n *numbering) key(q int) []byte {
	start := 0
	if q > 0 {
		start = n.ends[q-1]
	}
	return n.keys[start:n.ends[q]]
}

// find returns the place of the queue of 'm' key mk, or -1.
func (n *numbering) find(mk []byte) int {
	if n.index != nil {
		if q, ok := n.index[string(mk)]; ok {
			return q
		}
		return -1
	}
	for q := range n.ends {
		if bytes.Equal(n.key(q), mk) {
			return q
		}
	}
	return -1
}

// add adds the queue of 'm' key mk, last numbered last, and returns its
// place.
func (n *numbering) add(mk []byte, last uint64, known *uint64) int {
	n.keys = append(n.keys, mk...)
	n.ends = append(n.ends, len(n.keys))
	n.lasts = append(n.lasts, last)
	n.known = append(n.known, known)
	q := len(n.ends) - 1
	switch {
	case n.index != nil:
		n.index[string(mk)] = q
	case len(n.ends) > scanQueues:
		n.index = make(map[string]int, 2*len(n.ends))
		for q := range n.ends {
			n.index[string(n.key(q))] = q
		}
	}
	return q
}

func (s *Store) Read(_ context.Context, tenant, clientID string, after uint64, limit int) ([]store.Queued, error) {
	qp := clientKey('q', tenant, clientID)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: queueKey(tenant, clientID, after+1), UpperBound: upperBound(qp)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []store.Queued
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		k := it.Key()
		q := store.Queued{Seq: binary.BigEndian.Uint64(k[len(k)-8:])}
		if err := q.Message.UnmarshalBinary(it.Value()); err != nil {
			return nil, fmt.Errorf("queued message %d of %s: %w", q.Seq, clientID, err)
		}
		out = append(out, q)
	}
	if err := it.Error(); err != nil || len(out) == 0 {
		return out, err
	}
	return out, s.applyMarks(tenant, clientID, out)
}

// applyMarks adds the QoS 2 marks of the messages read.
func (s *Store) applyMarks(tenant, clientID string, qs []store.Queued) error {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: markKey(tenant, clientID, qs[0].Seq), UpperBound: markKey(tenant, clientID, qs[len(qs)-1].Seq+1),
	})
	if err != nil {
		return err
	}
	defer it.Close()
	i := 0
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		seq := binary.BigEndian.Uint64(k[len(k)-8:])
		for i < len(qs) && qs[i].Seq < seq {
			i++
		}
		if i < len(qs) && qs[i].Seq == seq && len(v) == 3 {
			qs[i].PacketID, qs[i].Released = binary.BigEndian.Uint16(v), v[2] == 1
		}
	}
	return it.Error()
}

// Ack deletes the named messages and their marks, and counts those that
// were queued (not one named twice, nor one acknowledged before) removed,
// in the same batch. Acks are not synced: one lost in a crash only means
// those messages are delivered again, which at least once allows.
//
// None can leave meanwhile (every removal holds the stripe), and one not
// yet committed is not deleted, so it stays queued and uncounted. Nor can
// a mark come or go (Mark holds the stripe too).
//
// Numbers that span at most twice their count, as the run a reader
// acknowledges from the queue's head does, are looked up with one
// iterator over their span (see ackSpan), if there are spanAckMin of
// them; others with a point read each (see ackEach).
func (s *Store) Ack(_ context.Context, tenant, clientID string, epoch uint64, seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	unlock, err := s.fence(tenant, clientID, epoch)
	if err != nil {
		return err
	}
	defer unlock()
	seqs = slices.Compact(slices.Sorted(slices.Values(seqs)))
	kk := clientKey('k', tenant, clientID)
	removed, err := readUint64(s.db, kk)
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	var n uint64
	if len(seqs) >= spanAckMin && seqs[len(seqs)-1]-seqs[0] < 2*uint64(len(seqs)) {
		n, err = s.ackSpan(b, tenant, clientID, seqs)
	} else {
		n, err = s.ackEach(b, tenant, clientID, seqs)
	}
	if err != nil {
		return err
	}
	if n > 0 {
		b.Set(kk, binary.BigEndian.AppendUint64(nil, removed+n), nil)
	}
	if b.Empty() {
		return nil
	}
	return b.Commit(pebble.NoSync)
}

// spanAckMin is the fewest numbers Ack looks up with an iterator: it
// takes two (one for the marks), which cost more than a point read or
// two.
const spanAckMin = 4

// ackSpan adds to b the deletions of the named messages (sorted, without
// duplicates) that the queue holds, and of their marks, and returns how
// many messages it deletes. One iterator over the span of the numbers
// finds the messages: the span holds no more deletions of messages
// acknowledged before than it names numbers, and none of those before
// it is stepped over. The marks are found likewise, and only those there
// are deleted: the outbox's queues have none.
//
// The messages are deleted one by one, not with a range deletion, though
// that would spare the memtable a key per message: Pebble fragments all
// of a memtable's range deletions anew for the first read (iterator or
// point read, of any key) after one is added, so their cost grows with
// their number. With BenchmarkOutboxCycle, a range deletion per run
// gained 3% (within the noise) on runs of 100 messages of 100 bytes,
// and lost 60% on runs of 64 messages of 8 bytes, whose deletions fill
// the memtable faster.
func (s *Store) ackSpan(b *pebble.Batch, tenant, clientID string, seqs []uint64) (uint64, error) {
	lo, hi := seqs[0], seqs[len(seqs)-1]
	qp := clientKey('q', tenant, clientID)
	found, err := named(make([]uint64, 0, len(seqs)), s.db, qp, lo, hi, seqs)
	if err != nil {
		return 0, err
	}
	deleteEach(b, qp, found)
	dp := clientKey('d', tenant, clientID)
	marks, err := named(nil, s.db, dp, lo, hi, seqs)
	if err != nil {
		return 0, err
	}
	deleteEach(b, dp, marks)
	return uint64(len(found)), nil
}

// named appends to found the numbers of seqs (sorted, from lo to hi)
// that r holds under prefix p, found in one pass over their span.
func named(found []uint64, r pebble.Reader, p []byte, lo, hi uint64, seqs []uint64) ([]uint64, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: seqKey(p, lo), UpperBound: spanEnd(p, hi)})
	if err != nil {
		return nil, err
	}
	i := 0
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		seq := binary.BigEndian.Uint64(k[len(k)-8:])
		for i < len(seqs) && seqs[i] < seq {
			i++
		}
		if i < len(seqs) && seqs[i] == seq {
			found = append(found, seq)
		}
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	return found, nil
}

// ackEach adds to b the deletions of the named messages the queue holds,
// each found with a point read, and of their marks, and returns how many
// messages it deletes. A seek from one number to the next, when they lie
// apart, would step over the deletions of the messages acknowledged
// between them, not yet compacted.
func (s *Store) ackEach(b *pebble.Batch, tenant, clientID string, seqs []uint64) (uint64, error) {
	qp, dp := clientKey('q', tenant, clientID), clientKey('d', tenant, clientID)
	k, n := qp, uint64(0)
	for _, seq := range seqs {
		k = binary.BigEndian.AppendUint64(k[:len(qp)], seq) // in qp's room for a number
		ok, err := exists(s.db, k)
		if err != nil {
			return 0, err
		}
		if ok {
			b.Delete(k, nil)
			n++
		}
	}
	deleteEach(b, dp, seqs)
	return n, nil
}

// deleteEach adds to b the deletion of the key of each number under
// prefix p (a clientKey: the keys are built in its room for a number).
func deleteEach(b *pebble.Batch, p []byte, seqs []uint64) {
	k := p
	for _, seq := range seqs {
		k = binary.BigEndian.AppendUint64(k[:len(p)], seq)
		b.Delete(k, nil)
	}
}

// seqKey is the key of number seq under prefix p.
func seqKey(p []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(p[:len(p):len(p)], seq)
}

// spanEnd is the smallest key above that of number seq under prefix p.
func spanEnd(p []byte, seq uint64) []byte {
	if seq == math.MaxUint64 {
		return upperBound(p)
	}
	return seqKey(p, seq+1)
}

// exists says whether r holds key k.
func exists(r pebble.Reader, k []byte) (bool, error) {
	_, closer, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, closer.Close()
}

// QueueInfo reads the queue's length from its last number and its count
// of removed messages, and its first message, in one view of the
// database: a few seeks, however long the queue.
//
// The first message is sought from the queue's low (see Store.lows), read
// before the view is taken, so that no message below it is in the view;
// it is a hint all the same: if the seek from there finds nothing, or a
// first message that leaves too few numbers up to the last for the
// length, the queue is sought again from its start.
//
// If the view still contradicts itself (more removed than numbered, a
// length but no message, too few numbers from the first message to the
// last), the count of removed messages is wrong: an older version, which
// does not keep it, removed messages after this one had counted them.
// QueueInfo then counts the queue (see recount) and returns what it holds.
func (s *Store) QueueInfo(_ context.Context, tenant, clientID string) (store.QueueInfo, error) {
	qp := clientKey('q', tenant, clientID)
	s.lowMu.Lock()
	low := s.lows[string(qp)]
	s.lowMu.Unlock()
	info, ok, err := s.queueInfo(tenant, clientID, low)
	if err != nil {
		return info, err
	}
	if !ok {
		if info, err = s.recount(tenant, clientID); err != nil {
			return info, err
		}
	}
	if info.Len > 0 {
		s.lowMu.Lock()
		if info.MinSeq > s.lows[string(qp)] {
			s.lows[string(qp)] = info.MinSeq
		}
		s.lowMu.Unlock()
	}
	return info, nil
}

// queueInfo is QueueInfo in one view, seeking the first message from low
// first; ok is false if the view contradicts itself.
func (s *Store) queueInfo(tenant, clientID string, low uint64) (info store.QueueInfo, ok bool, err error) {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return info, false, err
	}
	defer it.Close()
	if s.viewTaken != nil {
		s.viewTaken()
	}
	read := func(k []byte) (uint64, error) {
		if !it.SeekGE(k) || !bytes.Equal(it.Key(), k) {
			return 0, it.Error()
		}
		if len(it.Value()) != 8 {
			return 0, fmt.Errorf("damaged record %q", k)
		}
		return binary.BigEndian.Uint64(it.Value()), nil
	}
	last, err := read(clientKey('m', tenant, clientID))
	if err != nil {
		return info, false, err
	}
	removed, err := read(clientKey('k', tenant, clientID))
	if err != nil {
		return info, false, err
	}
	if removed > last {
		return info, false, nil
	}
	info.MaxSeq, info.Len = last, int(last-removed)
	if info.Len == 0 {
		return info, true, nil
	}
	qp := clientKey('q', tenant, clientID)
	// fits says whether the iterator is at a message with room for the
	// length from its number to the last.
	fits := func() bool {
		if !it.Valid() || !bytes.HasPrefix(it.Key(), qp) {
			return false
		}
		k := it.Key()
		first := binary.BigEndian.Uint64(k[len(k)-8:])
		return first <= last && last-first >= uint64(info.Len-1)
	}
	it.SeekGE(queueKey(tenant, clientID, low))
	if !fits() && low > 0 {
		it.SeekGE(queueKey(tenant, clientID, 0))
	}
	if err := it.Error(); err != nil {
		return info, false, err
	}
	if !fits() {
		return info, false, nil
	}
	k := it.Key()
	info.MinSeq = binary.BigEndian.Uint64(k[len(k)-8:])
	var m store.Message
	if err := m.UnmarshalBinary(it.Value()); err != nil {
		return info, false, err
	}
	info.Oldest = m.Created
	return info, true, nil
}

// recount counts the queue's messages and rewrites its count of removed
// messages to match, under the session's stripe so that no Ack or
// DeleteSession removes any meanwhile; an append adds its message and
// raises the last number in one batch, which leaves the count of removed
// messages as it was. It returns the queue's info as counted.
func (s *Store) recount(tenant, clientID string) (store.QueueInfo, error) {
	var info store.QueueInfo
	mu := s.stripe(clientKey('e', tenant, clientID))
	mu.Lock()
	defer mu.Unlock()
	snap := s.db.NewSnapshot()
	defer snap.Close()
	last, err := readUint64(snap, clientKey('m', tenant, clientID))
	if err != nil {
		return info, err
	}
	qp := clientKey('q', tenant, clientID)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: qp, UpperBound: upperBound(qp)})
	if err != nil {
		return info, err
	}
	defer it.Close()
	n := uint64(0)
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		seq := binary.BigEndian.Uint64(k[len(k)-8:])
		if n == 0 {
			info.MinSeq = seq
			var m store.Message
			if err := m.UnmarshalBinary(it.Value()); err != nil {
				return info, err
			}
			info.Oldest = m.Created
		}
		if seq > last {
			return info, fmt.Errorf("queue of %s holds message %d, above its last number %d", clientID, seq, last)
		}
		n++
	}
	if err := it.Error(); err != nil {
		return info, err
	}
	b := s.db.NewBatch()
	defer b.Close()
	b.Set(clientKey('k', tenant, clientID), binary.BigEndian.AppendUint64(nil, last-n), nil)
	if err := b.Commit(pebble.NoSync); err != nil {
		return info, err
	}
	info.MaxSeq, info.Len = last, int(n)
	return info, nil
}

func (s *Store) SetRetained(_ context.Context, tenant string, m store.Message) error {
	k := append(tenantPrefix('r', tenant), m.Topic...)
	if len(m.Payload) == 0 {
		return s.db.Delete(k, pebble.Sync)
	}
	v, err := m.MarshalBinary()
	if err != nil {
		return err
	}
	return s.db.Set(k, v, pebble.Sync)
}

func (s *Store) Retained(_ context.Context, tenant string) ([]store.Message, error) {
	p := tenantPrefix('r', tenant)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: upperBound(p)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []store.Message
	for it.First(); it.Valid(); it.Next() {
		var m store.Message
		if err := m.UnmarshalBinary(it.Value()); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, it.Error()
}

// Close flushes and closes the database; closing again does nothing. The
// store must not be used after Close.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		// Appends queued before are written; later ones fail.
		s.appends.Shut()
		if s.syncerDone != nil {
			<-s.syncerDone
		}
		// Pebble's Close closes the log, which fsyncs what is left.
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}
