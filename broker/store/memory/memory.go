// Package memory is a session store that keeps everything in this process:
// for tests and throwaway runs. Nothing survives a restart.
package memory

import (
	"cmp"
	"context"
	"slices"
	"sort"
	"sync"

	"github.com/roosthub/roost/broker/store"
)

// Store keeps sessions, queues and retained messages in maps.
type Store struct {
	mu       sync.Mutex
	sessions map[key]store.Session
	queues   map[key]*queue
	retained map[string]map[string]store.Message // tenant → topic → message
	receipts map[key]map[uint16]bool
	epochs   map[key]uint64
}

type key struct{ tenant, clientID string }

type queue struct {
	items []store.Queued
	max   uint64
}

// New returns an empty store.
func New() *Store {
	return &Store{sessions: map[key]store.Session{}, queues: map[key]*queue{}, retained: map[string]map[string]store.Message{}, receipts: map[key]map[uint16]bool{}, epochs: map[key]uint64{}}
}

func (s *Store) Claim(_ context.Context, tenant, clientID string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key{tenant, clientID}
	s.epochs[k]++
	return s.epochs[k], nil
}

// fenced refuses a write under a stale epoch. Called with s.mu held.
func (s *Store) fenced(k key, epoch uint64) error {
	if s.epochs[k] != epoch {
		return store.ErrFenced
	}
	return nil
}

func (s *Store) SaveSession(_ context.Context, tenant string, sess store.Session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(key{tenant, sess.ClientID}, sess.Epoch); err != nil {
		return err
	}
	sess.Subscriptions = slices.Clone(sess.Subscriptions)
	sess.PendingRelease = nil
	s.sessions[key{tenant, sess.ClientID}] = sess
	return nil
}

func (s *Store) Sessions(_ context.Context, tenant string) ([]store.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.Session
	for k, v := range s.sessions {
		if k.tenant == tenant {
			out = append(out, s.filled(k, v))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ClientID < out[j].ClientID })
	return out, nil
}

func (s *Store) Session(_ context.Context, tenant, clientID string) (store.Session, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key{tenant, clientID}
	v, ok := s.sessions[k]
	if !ok {
		return store.Session{}, false, nil
	}
	return s.filled(k, v), true, nil
}

// filled is a session's record with its pending releases, sorted, and its
// epoch. Called with s.mu held.
func (s *Store) filled(k key, v store.Session) store.Session {
	for id := range s.receipts[k] {
		v.PendingRelease = append(v.PendingRelease, id)
	}
	slices.Sort(v.PendingRelease)
	v.Epoch = s.epochs[k]
	return v
}

func (s *Store) DeleteSession(_ context.Context, tenant, clientID string, epoch uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(key{tenant, clientID}, epoch); err != nil {
		return err
	}
	delete(s.sessions, key{tenant, clientID})
	delete(s.receipts, key{tenant, clientID})
	if q := s.queues[key{tenant, clientID}]; q != nil {
		q.items = nil // keep max: numbers are never reused
	}
	return nil
}

func (s *Store) Append(_ context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.ClientID != "" {
		k := key{tenant, r.ClientID}
		if s.receipts[k] == nil {
			s.receipts[k] = map[uint16]bool{}
		}
		s.receipts[k][r.PacketID] = true
	}
	seqs := make([]uint64, len(items))
	for i, it := range items {
		k := key{tenant, it.ClientID}
		q := s.queues[k]
		if q == nil {
			q = &queue{}
			s.queues[k] = q
		}
		q.max++
		m := it.Message
		m.Payload = slices.Clone(m.Payload)
		q.items = append(q.items, store.Queued{Seq: q.max, Message: m})
		seqs[i] = q.max
	}
	return seqs, nil
}

func (s *Store) Release(_ context.Context, tenant, clientID string, epoch uint64, packetID uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(key{tenant, clientID}, epoch); err != nil {
		return err
	}
	delete(s.receipts[key{tenant, clientID}], packetID)
	return nil
}

func (s *Store) Mark(_ context.Context, tenant, clientID string, epoch, seq uint64, packetID uint16, released bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(key{tenant, clientID}, epoch); err != nil {
		return err
	}
	q := s.queues[key{tenant, clientID}]
	if q == nil {
		return nil
	}
	i, found := sort.Find(len(q.items), func(i int) int { return cmp.Compare(seq, q.items[i].Seq) })
	if found {
		q.items[i].PacketID, q.items[i].Released = packetID, released
	}
	return nil
}

func (s *Store) Read(_ context.Context, tenant, clientID string, after uint64, limit int) ([]store.Queued, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[key{tenant, clientID}]
	if q == nil {
		return nil, nil
	}
	i := sort.Search(len(q.items), func(i int) bool { return q.items[i].Seq > after })
	end := min(i+limit, len(q.items))
	return slices.Clone(q.items[i:end]), nil
}

func (s *Store) Ack(_ context.Context, tenant, clientID string, epoch uint64, seqs []uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fenced(key{tenant, clientID}, epoch); err != nil {
		return err
	}
	q := s.queues[key{tenant, clientID}]
	if q == nil || len(seqs) == 0 {
		return nil
	}
	for _, seq := range seqs {
		i, found := sort.Find(len(q.items), func(i int) int { return cmp.Compare(seq, q.items[i].Seq) })
		switch {
		case !found:
		case i == 0:
			q.items = q.items[1:] // the usual case: the oldest was delivered
		default:
			q.items = slices.Delete(q.items, i, i+1)
		}
	}
	if cap(q.items) > 2*len(q.items)+64 {
		q.items = slices.Clone(q.items) // let the deleted head go
	}
	return nil
}

func (s *Store) QueueInfo(_ context.Context, tenant, clientID string) (store.QueueInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[key{tenant, clientID}]
	if q == nil {
		return store.QueueInfo{}, nil
	}
	info := store.QueueInfo{Len: len(q.items), MaxSeq: q.max}
	if len(q.items) > 0 {
		info.MinSeq, info.Oldest = q.items[0].Seq, q.items[0].Created
	}
	return info, nil
}

func (s *Store) SetRetained(_ context.Context, tenant string, m store.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.retained[tenant]
	if t == nil {
		t = map[string]store.Message{}
		s.retained[tenant] = t
	}
	if len(m.Payload) == 0 {
		delete(t, m.Topic)
		return nil
	}
	m.Payload = slices.Clone(m.Payload)
	t[m.Topic] = m
	return nil
}

func (s *Store) Retained(_ context.Context, tenant string) ([]store.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.Message
	for _, m := range s.retained[tenant] {
		out = append(out, m)
	}
	return out, nil
}

// Close does nothing: there is nothing to release.
func (s *Store) Close() error { return nil }
