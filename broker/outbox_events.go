package broker

import (
	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/events"
)

// appendEvent puts a lifecycle event in the outbox of every destination
// whose rule matches it. Rules see an event as a message on its $events
// topic (events.Event.Topic) whose payload is the event as JSON, from the
// event's device and client: a filter such as $events/presence/# and a
// condition such as payload.type == "disconnected" select them. It runs
// on the hub's event publisher, never on a connection's path; under the
// refuse policy a full outbox drops the event (counted), as it does a
// QoS 0 message. It returns the error of the store, if any.
func (o *outbox) appendEvent(e events.Event, payload []byte) error {
	if o == nil {
		return nil
	}
	topic := e.Topic()
	rules, err := o.compiled()
	if err != nil {
		return err
	}
	if topic == "" || rules.none || !rules.set.MatchesTopic(topic) {
		return nil
	}
	ctx, cancel := storeCtx()
	defer cancel()
	in := dataout.Input{Topic: topic, Payload: payload, Device: e.Device, ClientID: e.ClientID, Time: e.Time}
	o.addMetadata(ctx, &in)
	// The hub's one event publisher must not wait for this tenant's share
	// of the CPU for rules (every tenant's events would): over it, the
	// rules that evaluate do not take the event.
	w, err := o.enqueue(dataout.NoWait(ctx), rules, in, store.Message{Topic: topic, Payload: payload, Created: o.now()}, false)
	if err != nil || w == nil {
		return err
	}
	return w.commit(ctx)
}
