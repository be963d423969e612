// Package bench holds what Roost's load generator (cmd/roost-bench) counts
// and how it summarises: latency percentiles, per-stream loss, duplicate
// and order accounting, and the median and spread of repeated runs.
package bench

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// Latencies collects latency samples; safe for concurrent use.
type Latencies struct {
	mu      sync.Mutex
	samples []time.Duration
}

// Add records one sample.
func (l *Latencies) Add(d time.Duration) {
	l.mu.Lock()
	l.samples = append(l.samples, d)
	l.mu.Unlock()
}

// Len is the number of samples.
func (l *Latencies) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.samples)
}

// Percentile returns the p-th percentile (0 < p <= 100) by the
// nearest-rank method: the smallest sample with at least p% of the samples
// at or below it. It is 0 without samples.
func (l *Latencies) Percentile(p float64) time.Duration {
	l.mu.Lock()
	s := slices.Clone(l.samples)
	l.mu.Unlock()
	return percentile(s, p)
}

func percentile(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// Streams tracks numbered messages per stream (a publisher and topic): what
// arrived, twice, or after a later number.
type Streams struct {
	mu      sync.Mutex
	streams map[string]*stream
	// first describes the first message out of order, for the report.
	first string
}

type stream struct {
	seen map[uint64]bool
	last uint64
	any  bool
	dups int
	ooo  int
}

// Seen records message n of a stream.
func (s *Streams) Seen(name string, n uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams == nil {
		s.streams = map[string]*stream{}
	}
	st := s.streams[name]
	if st == nil {
		st = &stream{seen: map[uint64]bool{}}
		s.streams[name] = st
	}
	if st.seen[n] {
		st.dups++
		return
	}
	st.seen[n] = true
	if st.any && n < st.last {
		st.ooo++
		if s.first == "" {
			s.first = fmt.Sprintf("%s: %d after %d", name, n, st.last)
		}
	}
	st.any, st.last = true, max(st.last, n)
}

// Tally is what a set of streams received against what was sent.
type Tally struct {
	Received   int `json:"received"`
	Lost       int `json:"lost"`
	Duplicates int `json:"duplicates"`
	OutOfOrder int `json:"out_of_order"`
	// FirstOutOfOrder names the first message that arrived out of order.
	FirstOutOfOrder string `json:"first_out_of_order,omitempty"`
}

// Tally counts, given how many messages (numbered 0 to sent-1) each stream
// was sent.
func (s *Streams) Tally(sent map[string]uint64) Tally {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := Tally{FirstOutOfOrder: s.first}
	for name, n := range sent {
		st := s.streams[name]
		got := 0
		if st != nil {
			for i := range n {
				if st.seen[i] {
					got++
				}
			}
			t.Duplicates += st.dups
			t.OutOfOrder += st.ooo
		}
		t.Received += got
		t.Lost += int(n) - got
	}
	return t
}

// OutOfOrder counts messages that arrived after a later one of their
// stream, over every stream seen.
func (s *Streams) OutOfOrder() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, st := range s.streams {
		n += st.ooo
	}
	return n
}

// Summary is the median and spread of one figure over repeated runs.
type Summary struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Runs   []float64 `json:"runs"`
}

// Summarise returns the median (the mean of the middle two for an even
// count) and range of the runs.
func Summarise(runs []float64) Summary {
	if len(runs) == 0 {
		return Summary{}
	}
	s := slices.Clone(runs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Summary{Median: m, Min: s[0], Max: s[len(s)-1], Runs: runs}
}
