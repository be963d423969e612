package broker

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// RetainedUserKeys returns the user property keys of the message a
// tenant's running broker retains on topic, as its retained messages hold
// it; false if it retains none there (or is not running).
func RetainedUserKeys(h *Hub, tenant, topic string) ([]string, bool) {
	inst := h.reg.running(tenant)
	if inst == nil {
		return nil, false
	}
	pk, ok := inst.server.Topics.Retained.Get(topic)
	var keys []string
	for _, u := range pk.Properties.User {
		keys = append(keys, u.Key)
	}
	return keys, ok
}

// RetainedDelivery is a delivery of a retained message mochi handed a
// client (a PUBLISH with its retain flag), as the hub's hooks left it:
// whether it still carried an internal tag, and whether the persistence
// took it for a stored copy of the client's queue.
type RetainedDelivery struct {
	ClientID string
	Tagged   bool
	Mapped   bool
}

// PauseRetained holds, from now on, each publish a tenant's running broker
// retains, once the hub's own hooks saw it retained and before mochi
// acknowledges and routes it; held hears of each (its topic) and release
// lets them all go (then and after). deliveries hears of each retained
// delivery from then on.
func PauseRetained(h *Hub, tenant string) (held <-chan string, release func(), deliveries <-chan RetainedDelivery) {
	inst := h.reg.running(tenant)
	hk := &pauseHook{inst: inst, held: make(chan string, 16), gate: make(chan struct{}), seen: make(chan RetainedDelivery, 64)}
	if err := inst.server.AddHook(hk, nil); err != nil {
		panic(err)
	}
	var once sync.Once
	return hk.held, func() { once.Do(func() { close(hk.gate) }) }, hk.seen
}

type pauseHook struct {
	mqtt.HookBase
	inst *instance
	held chan string
	gate chan struct{}
	seen chan RetainedDelivery
}

func (h *pauseHook) ID() string { return "test-pause-retained" }

func (h *pauseHook) Provides(b byte) bool { return b == mqtt.OnRetainMessage || b == mqtt.OnQosPublish }

func (h *pauseHook) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, _ int64) {
	h.held <- pk.TopicName
	<-h.gate
}

// OnQosPublish runs after the hub's own (handedOver), before the
// delivery is written: no acknowledgement has come back yet.
func (h *pauseHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if pk.FixedHeader.Type != packets.Publish || !pk.FixedHeader.Retain {
		return
	}
	d := RetainedDelivery{ClientID: cl.ID, Tagged: tagged(pk.Properties.User)}
	if p := h.inst.persist; p != nil {
		p.mu.Lock()
		_, d.Mapped = p.inflight[cl.ID][pk.PacketID]
		p.mu.Unlock()
	}
	h.seen <- d
}
