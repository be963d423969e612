package broker

import (
	"strconv"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
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
	if e.Device != "" {
		if d, found, err := o.device(ctx, e.Device); err == nil && found {
			in.Metadata = d.Metadata
		}
	}
	var queues []*destQueue
	var policy tenants.OutboxPolicy
	limit := o.limit()
	for _, m := range rules.set.Match(ctx, in) {
		if m.Err != nil {
			o.log.Debug("rule condition not evaluated", "rule", m.Rule.ID, "topic", topic, "err", m.Err)
			continue
		}
		q := o.queue(m.Rule.Destination)
		if containsQueue(queues, q) {
			continue
		}
		if o.backlogOf(ctx, q) >= limit {
			if policy == "" {
				policy = o.policy(ctx)
			}
			if policy == tenants.OutboxRefuse {
				q.dropped.Add(1)
				continue
			}
		}
		queues = append(queues, q)
	}
	if len(queues) == 0 {
		return nil
	}
	msg := store.Message{Topic: topic, Payload: payload, Created: o.now()}
	msg.Properties = encodeOrigin(o.idPrefix+"-"+strconv.FormatUint(o.nextID.Add(1), 36), e.Device, e.ClientID)
	items := make([]store.Item, len(queues))
	for i, q := range queues {
		items[i] = store.Item{ClientID: outboxID(q.id), Message: msg}
	}
	if _, err := o.st.Append(ctx, o.tenant, items, store.Receipt{}); err != nil {
		return err
	}
	for _, q := range queues {
		q.backlog.Add(1)
		o.wake(q)
	}
	return nil
}

func containsQueue(qs []*destQueue, q *destQueue) bool {
	for _, x := range qs {
		if x == q {
			return true
		}
	}
	return false
}
