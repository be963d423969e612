package broker

import (
	"errors"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi runs an event loop per server (Server.eventLoop, which Serve
// starts): tickers every second for expired sessions, expired in-flight
// messages, expired retained messages and delayed Wills, and one for $SYS.
// Every tenant's broker is a mochi server, so every idle tenant would wake
// four times a second, and each time copy its clients and its retained
// messages into new maps to look for something to expire. Roost needs the
// expiry (sessions past their expiry interval, messages past their
// message expiry or mochi's maximum); it has no use for the rest: $SYS is
// published once as the server starts and nobody may read it, and Wills
// are delayed by Roost (will.go), never by mochi.
//
// So mochi's tickers are stopped as the instance starts, and the expiry
// ones run only while something may expire soon: the instance notes the
// earliest time something it holds may expire (expireBy, from the hooks
// that see each such thing arrive, and from a look at everything it holds
// when the loop goes back to sleep), and one sweeper for the whole hub
// (Hub.sweep) starts the instance's expiry tickers when that time comes,
// and stops them once nothing is due within a minute. The expiry itself
// stays mochi's own code, run by mochi's own loop. An idle tenant costs
// nothing periodic; the sweeper costs one atomic load per instance a
// second.
//
// mochi v2.7.9 has no way to configure or stop its loop; its tickers are
// reached through reflection (mochiTickers). The upstream change: an
// option to run no event loop, with the expiry methods exported
// (Server.ClearExpired(now)) for the embedding program to call when it
// knows something is due.

// expiryLoop is the state of an instance's expiry tickers.
type expiryLoop struct {
	// tickers are mochi's expiry tickers (sessions, in-flight messages,
	// retained messages); nil when they could not be reached, and mochi's
	// loop runs as mochi runs it.
	tickers []*time.Ticker
	// due is the unix time from which something may be due to expire; 0
	// for nothing.
	due atomic.Int64
	// awake is set while the tickers run, since woke; looked is when an
	// instance that takes in sessions unseen was last looked at. The
	// sweeper's alone.
	awake        bool
	woke, looked time.Time
}

// Sweeper timing: a woken loop ticks at least twice before it is looked at
// again, and sleeps when nothing is due within sleepBefore.
const (
	awakeFor    = 2 * time.Second
	sleepBefore = time.Minute
)

var errMochiLayout = errors.New("mochi's event loop is not where mochi v2.7.9 keeps it")

// mochiTickers returns the tickers of srv's event loop: $SYS first, then the
// expiry ones (sessions, in-flight messages, retained messages), then the
// one for delayed Wills.
func mochiTickers(srv *mqtt.Server) (sys *time.Ticker, expiry []*time.Ticker, will *time.Ticker, err error) {
	loop := reflect.ValueOf(srv).Elem().FieldByName("loop")
	if !loop.IsValid() || loop.Kind() != reflect.Pointer || loop.IsNil() {
		return nil, nil, nil, errMochiLayout
	}
	l := loop.Elem()
	tickerType := reflect.TypeOf((*time.Ticker)(nil))
	get := func(name string) *time.Ticker {
		f := l.FieldByName(name)
		if !f.IsValid() || f.Type() != tickerType {
			return nil
		}
		return *(**time.Ticker)(unsafe.Pointer(f.UnsafeAddr()))
	}
	sys, will = get("sysTopics"), get("willDelaySend")
	for _, name := range []string{"clientExpiry", "inflightExpiry", "retainedExpiry"} {
		expiry = append(expiry, get(name))
	}
	if sys == nil || will == nil || expiry[0] == nil || expiry[1] == nil || expiry[2] == nil {
		return nil, nil, nil, errMochiLayout
	}
	return sys, expiry, will, nil
}

// quietLoop stops mochi's event loop of a started instance, but for the
// expiry tickers while something may expire, and drops the $SYS values
// mochi retained as it started (nobody may read them), with their topics.
func (inst *instance) quietLoop() {
	// An empty retained message removes one and trims the topic tree
	// it grew (some 20 KB of index for twenty $SYS topics).
	for topic := range inst.server.Topics.Retained.GetAll() {
		if strings.HasPrefix(topic, "$SYS") {
			inst.server.Topics.RetainMessage(packets.Packet{TopicName: topic})
		}
	}
	sys, expiry, will, err := mochiTickers(inst.server)
	if err != nil {
		inst.log.Warn("mochi's event loop keeps running every second", "err", err)
		return
	}
	sys.Stop()
	will.Stop()
	for _, t := range expiry {
		t.Stop()
	}
	inst.expiry.tickers = expiry
	if next := inst.nextExpiry(); next != 0 {
		inst.expireBy(next)
	}
}

// expireBy notes that something may expire at unix time t.
func (inst *instance) expireBy(t int64) {
	for {
		due := inst.expiry.due.Load()
		if due != 0 && due <= t {
			return
		}
		if inst.expiry.due.CompareAndSwap(due, t) {
			return
		}
	}
}

// sweep starts the expiry tickers of the instances with something due, and
// stops those of the instances with nothing due soon.
func (h *Hub) sweep() {
	now := time.Now() // mochi's clock, not the hub's: its expiry reads it
	for _, inst := range h.reg.all() {
		inst.sweep(now)
	}
}

func (inst *instance) sweep(now time.Time) {
	l := &inst.expiry
	if l.tickers == nil {
		return
	}
	if !l.awake {
		// A tenant whose sessions live anywhere (anywhere.go) takes in
		// sessions from the shared store that no hook sees arrive: what
		// it holds is looked at once a minute.
		if inst.anywhere && now.Sub(l.looked) >= sleepBefore {
			l.looked = now
			if next := inst.nextExpiry(); next != 0 {
				inst.expireBy(next)
			}
		}
		// Woken a second ahead, the loop's first tick comes when it is
		// due, as mochi's own ticks would.
		if due := l.due.Load(); due == 0 || due > now.Unix()+1 {
			return
		}
		// Whatever noted a time since is in what nextExpiry looks at
		// before the loop sleeps again.
		l.due.Store(0)
		for _, t := range l.tickers {
			t.Reset(time.Second)
		}
		l.awake, l.woke = true, now
		return
	}
	if now.Sub(l.woke) < awakeFor {
		return
	}
	next := inst.nextExpiry()
	if next != 0 && next <= now.Add(sleepBefore).Unix() {
		l.woke = now
		return
	}
	for _, t := range l.tickers {
		t.Stop()
	}
	l.awake = false
	if next != 0 {
		inst.expireBy(next)
	}
}

// nextExpiry is the earliest unix time from which mochi's expiry would
// remove something the instance holds now: a session, an in-flight
// message, a retained message; 0 for none. It reads them as mochi's
// clearExpiredClients, clearExpiredInflights and
// clearExpiredRetainedMessages do, which remove what is due strictly
// before their time: hence the second added.
func (inst *instance) nextExpiry() int64 {
	caps := inst.server.Options.Capabilities
	var next int64
	at := func(t int64) {
		if t != 0 && (next == 0 || t < next) {
			next = t
		}
	}
	for _, cl := range inst.server.Clients.GetAll() {
		at(sessionExpiry(cl, caps))
		for _, pk := range cl.State.Inflight.GetAll(false) {
			at(messageExpiry(pk, caps))
		}
	}
	for _, pk := range inst.server.Topics.Retained.GetAll() {
		at(messageExpiry(pk, caps))
	}
	return next
}

// sessionExpiry is when mochi would expire the session of a client that
// has disconnected; 0 while it is connected.
func sessionExpiry(cl *mqtt.Client, caps *mqtt.Capabilities) int64 {
	stopped := cl.StopTime()
	if stopped == 0 {
		return 0
	}
	expire := caps.MaximumSessionExpiryInterval
	if cl.Properties.ProtocolVersion == 5 && cl.Properties.Props.SessionExpiryIntervalFlag {
		expire = cl.Properties.Props.SessionExpiryInterval
	}
	return stopped + int64(expire) + 1
}

// messageExpiry is when mochi would drop a waiting or retained message: past
// its own expiry (MQTT 5), or past the server's maximum since it was
// created; 0 for never.
func messageExpiry(pk packets.Packet, caps *mqtt.Capabilities) int64 {
	var t int64
	if pk.ProtocolVersion == 5 && pk.Expiry > 0 {
		t = pk.Expiry + 1
	}
	if max := caps.MaximumMessageExpiryInterval; max > 0 && (t == 0 || pk.Created+max+1 < t) {
		t = pk.Created + max + 1
	}
	return t
}

// expiryHook notes the things that may expire as they arrive: a session
// kept past its connection, a message waiting for a client's
// acknowledgement, a retained message. It is also where a retained
// message loses the tags mochi retained it with (see untagRetained), one
// at a time (retainMu).
type expiryHook struct {
	mqtt.HookBase
	inst     *instance
	retainMu sync.Mutex
}

var _ mqtt.Hook = (*expiryHook)(nil)

var expiryHookEvents = provides(mqtt.OnDisconnect, mqtt.OnQosPublish, mqtt.OnRetainMessage, mqtt.OnPacketProcessed)

func (h *expiryHook) ID() string               { return "roost-expiry" }
func (h *expiryHook) Provides(b byte) bool     { return expiryHookEvents.has(b) }
func (h *expiryHook) caps() *mqtt.Capabilities { return h.inst.server.Options.Capabilities }

func (h *expiryHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if !expire {
		if t := sessionExpiry(cl, h.caps()); t != 0 {
			h.inst.expireBy(t)
		}
	}
}

func (h *expiryHook) OnQosPublish(_ *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if t := messageExpiry(pk, h.caps()); t != 0 {
		h.inst.expireBy(t)
	}
}

func (h *expiryHook) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, _ int64) {
	h.retainMu.Lock()
	untagRetained(h.inst.server.Topics, pk)
	h.retainMu.Unlock()
	if t := messageExpiry(pk, h.caps()); t != 0 {
		h.inst.expireBy(t)
	}
}

// OnPacketProcessed notes a QoS 2 PUBLISH, whose PUBREC mochi keeps in
// flight until the PUBREL; it was created now at the latest. (Not
// OnPacketRead: mochi would copy every packet out of this hook too.)
func (h *expiryHook) OnPacketProcessed(_ *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 2 {
		if max := h.caps().MaximumMessageExpiryInterval; max > 0 {
			h.inst.expireBy(time.Now().Unix() + max + 1)
		}
		if pk.ProtocolVersion == 5 && pk.Properties.MessageExpiryInterval > 0 {
			h.inst.expireBy(time.Now().Unix() + int64(pk.Properties.MessageExpiryInterval) + 1)
		}
	}
}
