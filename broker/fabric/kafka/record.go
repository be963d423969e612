package kafka

import (
	"encoding/binary"
	"errors"
	"hash/fnv"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/fabric"
)

// A record's value: a version byte, a kind, the owner that wrote it, then
// for a message its flags (QoS in the low two bits, 4 = retain), the
// number of groups served where it was published, topic, payload,
// properties and those groups; for a state, its shared filters. Every
// string with its length before it.
const (
	encoding = 1

	kindMessage = 1
	kindState   = 2
)

type record struct {
	origin  string
	state   bool
	msg     fabric.Message
	served  []string // a message's groups served where it was published
	filters []string // a state's shared filters
}

func appendString(b []byte, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func encodeMessage(origin string, m fabric.Message, served []string) []byte {
	b := make([]byte, 0, 24+len(origin)+len(m.Topic)+len(m.Payload)+len(m.Props))
	flags := m.QoS & 3
	if m.Retain {
		flags |= 4
	}
	b = append(b, encoding, kindMessage)
	b = appendString(b, []byte(origin))
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(served)))
	b = appendString(b, []byte(m.Topic))
	b = appendString(b, m.Payload)
	b = appendString(b, m.Props)
	for _, g := range served {
		b = appendString(b, []byte(g))
	}
	return b
}

func encodeState(origin string, filters []string) []byte {
	b := []byte{encoding, kindState}
	b = appendString(b, []byte(origin))
	b = binary.AppendUvarint(b, uint64(len(filters)))
	for _, f := range filters {
		b = appendString(b, []byte(f))
	}
	return b
}

var errRecord = errors.New("malformed record")

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	n, k := binary.Uvarint(r.b)
	if k <= 0 {
		r.err = errRecord
		return 0
	}
	r.b = r.b[k:]
	return n
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = errRecord
		return nil
	}
	s := r.b[:n]
	r.b = r.b[n:]
	return s
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.err = errRecord
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) strings(n uint64) []string {
	if r.err == nil && n > uint64(len(r.b)) {
		r.err = errRecord // each takes a byte at least
	}
	var out []string
	for range n {
		s := r.bytes()
		if r.err != nil {
			return nil
		}
		out = append(out, string(s))
	}
	return out
}

func decode(b []byte) (record, error) {
	r := &reader{b: b}
	if r.byte() != encoding {
		return record{}, errRecord
	}
	kind := r.byte()
	rec := record{origin: string(r.bytes())}
	switch kind {
	case kindMessage:
		flags := r.byte()
		n := r.uvarint()
		rec.msg = fabric.Message{QoS: flags & 3, Retain: flags&4 != 0}
		rec.msg.Topic = string(r.bytes())
		rec.msg.Payload = r.bytes()
		if props := r.bytes(); len(props) > 0 {
			rec.msg.Props = props
		}
		rec.served = r.strings(n)
	case kindState:
		rec.state = true
		rec.filters = r.strings(r.uvarint())
	default:
		return record{}, errRecord
	}
	if r.err != nil {
		return record{}, r.err
	}
	return rec, nil
}

// view is what an owner knows from the log of the others' shared routes,
// as of the record it is at.
type view struct {
	routes map[string][]string // owner → its shared filters
	seen   map[string]time.Time
	index  *mqtt.TopicsIndex
	count  atomic.Int64
}

func newView() *view {
	return &view{routes: map[string][]string{}, seen: map[string]time.Time{}, index: mqtt.NewTopicsIndex()}
}

// set replaces an owner's shared routes.
func (v *view) set(owner string, filters []string, at time.Time) {
	for _, f := range v.routes[owner] {
		v.index.Unsubscribe(f, owner)
	}
	if len(filters) == 0 {
		delete(v.routes, owner)
		delete(v.seen, owner)
	} else {
		v.routes[owner] = filters
		for _, f := range filters {
			v.index.Subscribe(owner, packets.Subscription{Filter: f})
		}
		v.touch(owner, at)
	}
	n := 0
	for _, fs := range v.routes {
		n += len(fs)
	}
	v.count.Store(int64(n))
}

// touch notes a record of an owner with routes.
func (v *view) touch(owner string, at time.Time) {
	if _, ok := v.routes[owner]; ok && at.After(v.seen[owner]) {
		v.seen[owner] = at
	}
}

// present reports whether an owner's routes count at a record's time: the
// home's always do (what is for it waits for it).
func (v *view) present(owner string, at time.Time, lease time.Duration) bool {
	return owner == fabric.Home || !v.seen[owner].Before(at.Add(-lease))
}

// score ranks an owner for a shared group's message at a place in the log.
func score(owner, group, place string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(owner))
	h.Write([]byte{0})
	h.Write([]byte(group))
	h.Write([]byte{0})
	h.Write([]byte(place))
	// FNV alone spreads names that differ in one byte poorly: mix it
	// (splitmix64's finaliser).
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
