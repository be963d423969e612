package broker

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// Exporter writes messages to Kafka and returns once Kafka has them.
type Exporter interface {
	Export(ctx context.Context, msgs []ExportMessage) error
}

// ExportMessage is one message for one Kafka topic.
type ExportMessage struct {
	Topic   string
	Key     []byte
	Value   []byte
	Headers map[string]string
}

// listCache keeps a tenant's list read from the directory until a change
// drops it. Reads are one atomic load; forget orders itself after a read in
// progress, so a stale list is never kept.
type listCache[T any] struct {
	mu sync.Mutex
	v  atomic.Pointer[[]T]
}

func (c *listCache[T]) get(load func() ([]T, error)) ([]T, error) {
	if p := c.v.Load(); p != nil {
		return *p, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.v.Load(); p != nil {
		return *p, nil
	}
	list, err := load()
	if err != nil {
		return nil, err
	}
	c.v.Store(&list)
	return list, nil
}

func (c *listCache[T]) forget() {
	c.mu.Lock()
	c.v.Store(nil)
	c.mu.Unlock()
}

// exportHook writes the messages matching a tenant's export rules to Kafka
// before they are acknowledged.
type exportHook struct {
	mqtt.HookBase
	inst *instance
}

func (h *exportHook) ID() string { return "roost-export" }

func (h *exportHook) Provides(b byte) bool { return b == mqtt.OnPublish }

// OnPublish exports a publish the quotas let through; one Kafka did not
// take is not acknowledged (see export).
func (h *exportHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if remote(pk) {
		return pk, nil // exported where it arrived
	}
	if strings.HasPrefix(pk.TopicName, "$events/") && cl.Net.Inline {
		// An event the hub publishes for the tenant's subscribers: it was
		// exported as it was raised (exportEvent).
		return pk, nil
	}
	if err := h.inst.export(cl, pk); err != nil {
		return h.inst.refusePublish(cl, pk, err)
	}
	return pk, nil
}

// export writes a publish to Kafka for every export rule it matches, before
// it is acknowledged. Only QoS 1 and 2 publishers are refused when Kafka
// does not take it; QoS 0 exports are best effort.
func (inst *instance) export(cl *mqtt.Client, pk packets.Packet) error {
	exp := inst.exporter
	if exp == nil {
		return nil
	}
	rules, err := inst.exportRules()
	if err != nil {
		return err
	}
	var msgs []ExportMessage
	var matched []string
	device := "api"
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		device = dc.id.device
	}
	// Made for the first rule with a condition or projection; only the
	// rules' evaluation is charged to the tenant's share of the CPU
	// (dataout.Budget), as its outbox's rules.
	var ev *dataout.Evaluation
	defer func() { inst.spendRules(ev) }()
	overBudget := false
	for _, r := range rules {
		if !tenants.MatchTopic(r.Filter, pk.TopicName) {
			continue
		}
		value, shaped := pk.Payload, false
		if r.Shapes() {
			if overBudget {
				continue
			}
			if ev == nil {
				// A QoS 1 or 2 publish that cannot wait for the share is
				// refused (0x97: its publisher may send it again); a QoS
				// 0 one is not exported by the rules that evaluate.
				wctx, cancel := storeCtx()
				err := inst.evalBudget.Wait(wctx)
				cancel()
				if err != nil {
					if pk.FixedHeader.Qos > 0 {
						return errRulesBusy
					}
					overBudget = true
					continue
				}
				in := dataout.Input{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Device: device, ClientID: cl.ID, Time: inst.env.now()}
				if !cl.Net.Inline {
					in.Metadata = inst.metadataOf(device)
				}
				ev = dataout.NewEvaluation(in)
			}
			// A condition or projection that cannot be evaluated (a
			// missing field, the cost limit) does not match, as for a
			// destination's rule.
			ok, payload, err := ev.Apply(r)
			if err != nil {
				inst.log.Debug("export rule condition or projection not evaluated", "rule", r.ID, "topic", pk.TopicName, "err", err)
			}
			if !ok {
				continue
			}
			value, shaped = payload, r.Projection != ""
		}
		headers := map[string]string{"mqtt_topic": pk.TopicName, "device": device, "client_id": cl.ID, "qos": strconv.Itoa(int(pk.FixedHeader.Qos))}
		if shaped {
			headers["content_type"] = "application/json"
		}
		msgs = append(msgs, ExportMessage{Topic: r.KafkaTopic, Key: []byte(device), Value: value, Headers: headers})
		matched = append(matched, r.ID)
	}
	if len(msgs) == 0 {
		return nil
	}
	ctx, cancel := storeCtx()
	defer cancel()
	if err := exp.Export(ctx, msgs); err != nil {
		inst.errMu.Lock()
		for _, id := range matched {
			inst.exportErrs[id]++
		}
		inst.errMu.Unlock()
		inst.log.Warn("export to kafka", "topic", pk.TopicName, "rules", len(matched), "err", err)
		if pk.FixedHeader.Qos > 0 {
			return err
		}
	}
	return nil
}

// metadataOf is a device's metadata, nil if it is not found.
func (inst *instance) metadataOf(device string) map[string]string {
	ctx, cancel := storeCtx()
	defer cancel()
	if d, found, err := inst.dir.device(ctx, inst.tenant, device); err == nil && found {
		return d.Metadata
	}
	return nil
}

// spendRules charges an evaluation's rules (if any ran) to the tenant's
// share of the CPU.
func (inst *instance) spendRules(ev *dataout.Evaluation) {
	if ev != nil {
		inst.evalBudget.Spend(ev.Spent())
	}
}

// exportRules is the tenant's Kafka export rules, compiled. Conditions
// and projections are compiled once per change of the rules, as the
// outbox's are, and only those that changed; one that no longer compiles (checked when it was made)
// leaves its rule out.
func (inst *instance) exportRules() ([]*dataout.Rule, error) {
	rules, err := inst.exports.get(func() ([]*dataout.Rule, error) {
		ctx, cancel := storeCtx()
		defer cancel()
		list, err := inst.dir.dir.ExportRules(ctx, inst.tenant)
		if err != nil {
			return nil, err
		}
		out, errs := inst.exportCompiler.Compile(list)
		for _, err := range errs {
			inst.log.Error("compile an export rule", "err", err)
		}
		return out, nil
	})
	if err != nil {
		inst.log.Error("read export rules", "err", err)
	}
	return rules, err
}

func (inst *instance) exportErrors() map[string]int64 {
	inst.errMu.Lock()
	defer inst.errMu.Unlock()
	out := make(map[string]int64, len(inst.exportErrs))
	for k, v := range inst.exportErrs {
		out[k] = v
	}
	return out
}

// eventExport is one event's records for the operator's Kafka, one for
// each export rule of the tenant's that matched it.
type eventExport struct {
	inst  *instance
	rules []string
	msgs  []ExportMessage
}

// maxEventExports bounds the events waiting for the operator's Kafka, and
// maxEventBatch how many of them go in one write. One tenant has at most
// maxTenantEventExports of them waiting (a fair share: a tenant flooding
// events, or whose events Kafka is slow to take, fills its own share and
// drops its own events, never another tenant's).
const (
	maxEventExports       = 4096
	maxTenantEventExports = 512
	maxEventBatch         = 256
)

// eventShares counts each tenant's events waiting for the operator's Kafka
// (in the hub's queue), against maxTenantEventExports.
type eventShares struct {
	mu sync.Mutex
	m  map[string]*eventShare
}

type eventShare struct {
	queued int
	// dropping: the tenant's share was full; logged once, until its
	// queue drains.
	dropping bool
}

// take counts one more of the tenant's events queued; false if its share
// is full. first reports the first refusal since the tenant's queue was
// last empty (to log once, not per event).
func (s *eventShares) take(tenant string) (ok, first bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*eventShare{}
	}
	e := s.m[tenant]
	if e == nil {
		e = &eventShare{}
		s.m[tenant] = e
	}
	if e.queued >= maxTenantEventExports {
		first = !e.dropping
		e.dropping = true
		return false, first
	}
	e.queued++
	return true, false
}

// give counts one of the tenant's events out of the queue.
func (s *eventShares) give(tenant string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[tenant]; e != nil {
		if e.queued--; e.queued <= 0 {
			delete(s.m, tenant)
		}
	}
}

// exportEvent queues an event for the operator's Kafka, once for every
// export rule of the tenant's it matches: the event as JSON (payload) on
// the rule's Kafka topic, keyed by its device, as the rule would export a
// message on the event's $events topic. A rule's condition sees the event
// as appendEvent's rules do. It runs on the hub's event publisher, so it
// never waits for Kafka: the events are written by exportEvents, and
// those that find the tenant's share of the queue (or the queue) full are
// dropped and counted in their rules' errors — the tenant's own — as a
// QoS 0 export Kafka refused is.
func (h *Hub) exportEvent(inst *instance, e events.Event, payload []byte) {
	if h.eventExports == nil || inst.exporter == nil {
		return
	}
	topic := e.Topic()
	rules, err := inst.exportRules()
	if err != nil || topic == "" {
		return
	}
	x := eventExport{inst: inst}
	// As export's rules; but the hub's one event publisher never waits for
	// a tenant's share of the CPU: over it, the event is not exported by
	// the rules that evaluate (those that do not still export it).
	var ev *dataout.Evaluation
	defer func() { inst.spendRules(ev) }()
	overBudget := false
	for _, r := range rules {
		if !tenants.IsEventsFilter(r.Filter) || !tenants.MatchTopic(r.Filter, topic) {
			continue
		}
		value := payload
		if r.Shapes() {
			if overBudget {
				continue
			}
			if ev == nil {
				if inst.evalBudget.Wait(dataout.NoWait(context.Background())) != nil {
					inst.log.Debug("event not exported by rules that evaluate: the tenant's rules are over their share of the CPU", "topic", topic)
					overBudget = true
					continue
				}
				in := dataout.Input{Topic: topic, Payload: payload, Device: e.Device, ClientID: e.ClientID, Time: e.Time}
				if e.Device != "" {
					in.Metadata = inst.metadataOf(e.Device)
				}
				ev = dataout.NewEvaluation(in)
			}
			ok, shaped, err := ev.Apply(r)
			if err != nil {
				inst.log.Debug("export rule condition or projection not evaluated", "rule", r.ID, "topic", topic, "err", err)
			}
			if !ok {
				continue
			}
			value = shaped
		}
		headers := map[string]string{"mqtt_topic": topic, "event": e.Type, "qos": "0", "content_type": "application/json"}
		if e.Device != "" {
			headers["device"] = e.Device
		}
		if e.ClientID != "" {
			headers["client_id"] = e.ClientID
		}
		x.msgs = append(x.msgs, ExportMessage{Topic: r.KafkaTopic, Key: []byte(e.Device), Value: value, Headers: headers})
		x.rules = append(x.rules, r.ID)
	}
	if len(x.msgs) == 0 {
		return
	}
	ok, first := h.eventShares.take(inst.tenant)
	if !ok {
		x.failed()
		if first {
			inst.log.Warn("export an event to kafka: the tenant's share of the queue is full; its events are dropped (counted in their rules' errors) until it drains",
				"topic", topic, "rules", len(x.rules), "share", maxTenantEventExports)
		}
		return
	}
	select {
	case h.eventExports <- x:
	default:
		h.eventShares.give(inst.tenant)
		x.failed()
		inst.log.Warn("export an event to kafka: the queue is full", "topic", topic, "rules", len(x.rules))
	}
}

// failed counts the event's records as refused, in each rule's errors.
func (x eventExport) failed() {
	x.inst.errMu.Lock()
	for _, id := range x.rules {
		x.inst.exportErrs[id]++
	}
	x.inst.errMu.Unlock()
}

// exportEvents writes the queued events to the operator's Kafka, as many
// as are waiting (up to maxEventBatch) in one write, until the hub closes.
// Events are best effort, as a QoS 0 export: what Kafka refuses is counted
// and logged, not retried.
func (h *Hub) exportEvents() {
	defer h.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.wg.Go(func() {
		// A write in progress as the hub closes does not hold it up.
		select {
		case <-h.done:
			cancel()
		case <-ctx.Done():
		}
	})
	var batch []eventExport
	for {
		batch = batch[:0]
		select {
		case <-h.done:
			return
		case x := <-h.eventExports:
			h.eventShares.give(x.inst.tenant)
			batch = append(batch, x)
		}
	more:
		for len(batch) < maxEventBatch {
			select {
			case x := <-h.eventExports:
				h.eventShares.give(x.inst.tenant)
				batch = append(batch, x)
			default:
				break more
			}
		}
		var msgs []ExportMessage
		for _, x := range batch {
			msgs = append(msgs, x.msgs...)
		}
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		err := h.cfg.Exporter.Export(wctx, msgs)
		wcancel()
		if err != nil {
			for _, x := range batch {
				x.failed()
			}
			h.log.Warn("export events to kafka", "events", len(batch), "records", len(msgs), "err", err)
		}
	}
}
