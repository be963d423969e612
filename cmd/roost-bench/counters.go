package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/roosthub/roost/bench"
)

// A broker that drops a message counts it, and the bench counts it lost:
// the suite reads the broker's own counters around every run and puts them
// beside the loss, so that a loss the broker accounts for (a slow
// subscriber's full queue) is told apart from one it does not (a bug).
// Roost's come from its Prometheus metrics, bare mochi's from its Info
// counters (served on the bench's debug listener); mosquitto and NATS are
// not read.

// countedFamilies are Roost's metrics that explain a loss, summed over
// tenants (the tenant label is dropped): drops for connected clients, by
// reason; publishes throttled, denied or over a quota; handshakes refused;
// and messages in and out, so that a loss can be set against what passed.
var countedFamilies = []string{
	"roost_messages_dropped_total",
	"roost_throttled_total",
	"roost_publishes_denied_total",
	"roost_quota_exceeded_total",
	"roost_handshakes_dropped_total",
	"roost_messages_total",
}

// droppedFamily is the family whose reason label names a drop.
const droppedFamily = "roost_messages_dropped_total"

// runCounts is what a broker counted itself during one run, beside what
// the bench counted lost.
type runCounts struct {
	// Lost is what the bench counted lost in the run (absent for a run
	// without a tally: connects, memory, a sustained-rate search).
	Lost *int `json:"lost,omitempty"`
	// Dropped are the messages the broker dropped for connected clients,
	// by reason: pending_writes (the client's queue of packets waiting to
	// be written was full) and max_queued (its in-flight messages were at
	// their bound); Roost's roost_messages_dropped_total.
	Dropped map[string]int64 `json:"dropped"`
	// Counters are the rest of what the broker counted during the run, by
	// series less its tenant label, those that moved:
	// roost_throttled_total, roost_messages_total{direction="out"}, ...
	Counters map[string]int64 `json:"counters,omitempty"`
}

// dropped sums the drops of every reason.
func (c runCounts) dropped() int64 {
	var n int64
	for _, v := range c.Dropped {
		n += v
	}
	return n
}

// countsBetween is what was counted between two readings of a broker's
// counters. A counter that went down started again (the tenant's broker
// stopped and started between the readings): its count is the later
// reading.
func countsBetween(before, after map[string]int64) runCounts {
	c := runCounts{Dropped: map[string]int64{}, Counters: map[string]int64{}}
	for k, v := range after {
		if b := before[k]; v >= b {
			v -= b
		}
		if reason, ok := strings.CutPrefix(k, droppedFamily+`{reason="`); ok {
			c.Dropped[strings.TrimSuffix(reason, `"}`)] = v
			continue
		}
		if v != 0 {
			c.Counters[k] = v
		}
	}
	return c
}

// lostIn is what the bench counted lost in a run's result, if it counts.
func lostIn(r any) *int {
	var n int
	switch r := r.(type) {
	case bench.P2PResult:
		n = r.Tally.Lost
	case bench.FanoutResult:
		n = r.Tally.Lost
	case bench.FaninResult:
		n = r.Tally.Lost
	default:
		return nil
	}
	return &n
}

// parseCounters reads the Prometheus text exposition format and returns
// the series of families, each summed over the values of its tenant label
// and named as the format names it less that label, its other labels in
// order: `roost_messages_dropped_total{reason="pending_writes"}`.
func parseCounters(r io.Reader, families []string) (map[string]int64, error) {
	out := map[string]int64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		name, labels, value, err := parseSample(text)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if !slices.Contains(families, name) {
			continue
		}
		delete(labels, "tenant")
		key := name
		if len(labels) > 0 {
			parts := make([]string, 0, len(labels))
			for _, k := range slices.Sorted(maps.Keys(labels)) {
				parts = append(parts, k+"="+strconv.Quote(labels[k]))
			}
			key += "{" + strings.Join(parts, ",") + "}"
		}
		out[key] += int64(value)
	}
	return out, sc.Err()
}

// parseSample parses one sample line: name, optional {labels}, value and
// an optional timestamp.
func parseSample(s string) (name string, labels map[string]string, value float64, err error) {
	labels = map[string]string{}
	end := strings.IndexAny(s, "{ \t")
	if end <= 0 {
		return "", nil, 0, fmt.Errorf("no value in %q", s)
	}
	name, s = s[:end], s[end:]
	if s[0] == '{' {
		s = s[1:]
		for {
			s = strings.TrimLeft(s, " \t,")
			if strings.HasPrefix(s, "}") {
				s = s[1:]
				break
			}
			eq := strings.IndexByte(s, '=')
			if eq <= 0 || len(s) < eq+2 || s[eq+1] != '"' {
				return "", nil, 0, fmt.Errorf("bad label in %q", s)
			}
			key := strings.TrimSpace(s[:eq])
			s = s[eq+2:]
			var v strings.Builder
			closed := false
			for i := 0; i < len(s); i++ {
				switch c := s[i]; {
				case c == '\\' && i+1 < len(s):
					i++
					switch s[i] {
					case 'n':
						v.WriteByte('\n')
					default:
						v.WriteByte(s[i]) // \\ and \"
					}
				case c == '"':
					s, closed = s[i+1:], true
				default:
					v.WriteByte(c)
				}
				if closed {
					break
				}
			}
			if !closed {
				return "", nil, 0, fmt.Errorf("unterminated label value of %s", key)
			}
			labels[key] = v.String()
		}
	}
	fields := strings.Fields(s)
	if len(fields) < 1 || len(fields) > 2 {
		return "", nil, 0, fmt.Errorf("want a value (and a timestamp) after %s, got %q", name, s)
	}
	value, err = strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return "", nil, 0, fmt.Errorf("value of %s: %w", name, err)
	}
	return name, labels, value, nil
}

// roostCounters reads Roost's counters from its /metrics, as the operator.
func roostCounters(base, token string) func() (map[string]int64, error) {
	return func() (map[string]int64, error) {
		req, err := http.NewRequest("GET", base+"/metrics", nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
		}
		return parseCounters(resp.Body, countedFamilies)
	}
}

// mochiCounts are bare mochi's counters of drops and messages, named as
// Roost's metrics name the same counts (Roost reads them from its
// instances' mochi).
func mochiCounts(srv *mqtt.Server) map[string]int64 {
	info := srv.Info
	return map[string]int64{
		droppedFamily + `{reason="pending_writes"}`: atomic.LoadInt64(&info.MessagesDropped),
		droppedFamily + `{reason="max_queued"}`:     atomic.LoadInt64(&info.InflightDropped),
		`mochi_messages_received`:                   atomic.LoadInt64(&info.MessagesReceived),
		`mochi_messages_sent`:                       atomic.LoadInt64(&info.MessagesSent),
	}
}

// debugCounters reads the counters a bench broker's debug listener serves
// at /debug/counters.
func debugCounters(addr string) func() (map[string]int64, error) {
	return func() (map[string]int64, error) {
		resp, err := http.Get("http://" + addr + "/debug/counters")
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET /debug/counters: %s", resp.Status)
		}
		var m map[string]int64
		return m, json.NewDecoder(resp.Body).Decode(&m)
	}
}

// profile starts a CPU profile (kind "profile") or an execution trace
// ("trace") of the Go broker whose debug listener is at addr, for d
// rounded up to whole seconds, and returns a function that waits for it
// and writes it to path.
func profile(addr, kind string, d time.Duration, path string) func() error {
	seconds := int((d + time.Second - 1) / time.Second)
	done := make(chan error, 1)
	go func() {
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", addr, kind, seconds))
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(resp.Body)
			done <- fmt.Errorf("GET /debug/pprof/%s: %s %s", kind, resp.Status, msg)
			return
		}
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			err = os.WriteFile(path, b, 0o644)
		}
		done <- err
	}()
	return func() error { return <-done }
}
