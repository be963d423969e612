package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// eventsHook raises the lifecycle events of a tenant's devices: connected
// (once the connection is accepted), disconnected (with the reason), and
// the filters granted or removed by each SUBSCRIBE and UNSUBSCRIBE. It comes
// after the hooks that may refuse or change them.
type eventsHook struct {
	mqtt.HookBase
	inst *instance
}

func (h *eventsHook) ID() string { return "roost-events" }

var eventsHookEvents = provides(mqtt.OnConnect, mqtt.OnDisconnect, mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnPublishDropped)

func (h *eventsHook) Provides(b byte) bool { return eventsHookEvents.has(b) }

func (h *eventsHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	h.inst.emit(cl, events.Event{Type: events.Connected})
	return nil
}

func (h *eventsHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if _, ok := cl.Net.Conn.(*deviceConn); !ok {
		return // a session being restored, not a connection ending
	}
	h.inst.emit(cl, events.Event{Type: events.Disconnected, Reason: disconnectReason(cl, err)})
}

// disconnectReason says why a device's connection ended, for its
// disconnected event. mochi ends a connection whose client sent DISCONNECT
// without an error (or, for MQTT 5 reason code 0x04, with the code as
// one): that is "client disconnected", with the reason code when it is
// not 0 (MQTT 5). Otherwise it is the error mochi ended the connection
// with, or the cause it was stopped for.
func disconnectReason(cl *mqtt.Client, err error) string {
	dc, _ := cl.Net.Conn.(*deviceConn)
	if dc != nil && dc.byClient != 0 && (err == nil || errors.Is(err, packets.CodeDisconnectWillMessage)) {
		if code := byte(dc.byClient); code != 0 {
			if c, ok := err.(packets.Code); ok {
				return fmt.Sprintf("client disconnected (reason code 0x%02x, %s)", code, c.Reason)
			}
			return fmt.Sprintf("client disconnected (reason code 0x%02x)", code)
		}
		return "client disconnected"
	}
	if err == nil {
		err = cl.StopCause()
	}
	if err == nil {
		return ""
	}
	return err.Error()
}

func (h *eventsHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	var granted []string
	for i, f := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] < 0x80 {
			granted = append(granted, f.Filter)
		}
	}
	if len(granted) > 0 {
		h.inst.emit(cl, events.Event{Type: events.Subscribed, Filters: granted})
	}
}

// OnUnsubscribed: mochi also calls it when it clears an ended session's
// subscriptions; only a client's own UNSUBSCRIBE is an event.
func (h *eventsHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if cl.Closed() {
		return
	}
	var filters []string
	for _, f := range pk.Filters {
		filters = append(filters, f.Filter)
	}
	h.inst.emit(cl, events.Event{Type: events.Unsubscribed, Filters: filters})
}

// emit sends an event about a client of this tenant.
func (inst *instance) emit(cl *mqtt.Client, e events.Event) {
	if cl.Net.Inline {
		return // the hub's own client (API publishes, console watchers) is not a device
	}
	e.Tenant, e.ClientID = inst.tenant, cl.ID
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		// mochi formatted the address once, as the connection came.
		e.Device, e.Remote = dc.id.device, cl.Net.Remote
	}
	inst.env.emit(e)
}

// emit sends an event stamped with the hub's clock, and queues it for the
// tenant's own $events topics.
func (h *Hub) emit(e events.Event) {
	e.Time = h.now().UTC()
	h.cfg.Events.Emit(e)
	if !e.HasTopic() {
		return
	}
	select {
	case h.eventPubs <- e:
	default:
		h.eventsDropped.Add(1) // the publisher is behind: the sink still has it
	}
}

// publishEvents publishes events on their tenant's $events topics, away
// from the hooks that raised them. A tenant whose broker is not running has
// no subscriber to tell.
func (h *Hub) publishEvents() {
	defer h.wg.Done()
	for {
		select {
		case <-h.done:
			return
		case e := <-h.eventPubs:
			inst := h.reg.running(e.Tenant)
			if inst == nil {
				continue
			}
			topic := e.Topic()
			w := h.eventWants(inst, topic)
			if w == (eventWants{}) {
				continue // nothing in the tenant wants it: skip its JSON
			}
			b, err := json.Marshal(e)
			if err != nil {
				continue
			}
			if w.outbox {
				// Rules with a destination may match events (outbox_events.go).
				if err := inst.out.appendEvent(e, b); err != nil {
					h.log.Warn("put an event in the outbox", "tenant", e.Tenant, "topic", topic, "err", err)
				}
			}
			if w.export {
				// And rules to the operator's Kafka (export.go).
				h.exportEvent(inst, e, b)
			}
			if w.subscribers {
				if err := inst.server.Publish(topic, b, false, 0); err != nil {
					h.log.Debug("publish event", "tenant", e.Tenant, "topic", topic, "err", err)
				}
			}
		}
	}
}

// eventWants says which of an event's takers in its tenant may want it:
// the outbox of the rules with a destination, the export rules to the
// operator's Kafka, the subscribers to its $events topic. Most events
// (a connect's, in a tenant that listens to none) have none, and are
// not encoded at all; one that has any is encoded once, for all of them.
type eventWants struct {
	outbox, export, subscribers bool
}

// eventWants checks the cheap part of each taker's choice — whether a
// rule's filter matches the event's topic, whether anyone subscribes to
// it — so that a taker it names may still decline the event (a rule's
// condition), but one it leaves out would have declined it.
func (h *Hub) eventWants(inst *instance, topic string) eventWants {
	var w eventWants
	if topic == "" {
		return w
	}
	if inst.out != nil {
		// An error reading the rules is appendEvent's to report.
		rules, err := inst.out.compiled()
		w.outbox = err != nil || (!rules.none && rules.set.MatchesTopic(topic))
	}
	if h.eventExports != nil && inst.exporter != nil {
		rules, _ := inst.exportRules() // logged there
		for _, r := range rules {
			if tenants.IsEventsFilter(r.Filter) && tenants.MatchTopic(r.Filter, topic) {
				w.export = true
				break
			}
		}
	}
	subs := inst.server.Topics.Subscribers(topic)
	w.subscribers = len(subs.Subscriptions) > 0 || len(subs.Shared) > 0
	return w
}

// PublishEvent publishes an event raised outside the data plane — one of
// billing's, about the tenant rather than a device, which its raiser has
// stored already — as the hub's own events are: into the outboxes of the
// tenant's rules that match it, and on its $events topic inside the
// tenant. The tenant's broker is started if it is not running (its
// outboxes live there). A suspended tenant's broker is not: its events
// (billing_suspended first) reach the outboxes of its rules with a
// destination alone, delivered without its broker (publishSuspended).
func (h *Hub) PublishEvent(ctx context.Context, e events.Event) error {
	topic := e.Topic()
	if topic == "" || e.Tenant == "" {
		return &tenants.FieldError{Field: "type", Message: "an event published in its tenant has a tenant and an $events topic"}
	}
	t, err := h.activeTenant(ctx, e.Tenant)
	if errors.Is(err, tenants.ErrForbidden) {
		if st, found, derr := h.dir.tenant(ctx, e.Tenant); derr == nil && found && st.Suspended {
			return h.publishSuspended(ctx, st, e)
		}
	}
	if err != nil {
		return err
	}
	inst, err := h.reg.acquire(t)
	if err != nil {
		return err
	}
	defer h.reg.release(inst)
	if e.Time.IsZero() {
		e.Time = h.now().UTC()
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := inst.out.appendEvent(e, b); err != nil {
		return fmt.Errorf("put an event in the outbox: %w", err)
	}
	h.exportEvent(inst, e, b)
	if subs := inst.server.Topics.Subscribers(topic); len(subs.Subscriptions) == 0 && len(subs.Shared) == 0 {
		return nil
	}
	return inst.server.Publish(topic, b, false, 0)
}
