package broker

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/dataout"
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
	rules, err := inst.exports.get(func() ([]*dataout.Rule, error) {
		ctx, cancel := storeCtx()
		defer cancel()
		list, err := inst.dir.dir.ExportRules(ctx, inst.tenant)
		if err != nil {
			return nil, err
		}
		// Conditions are compiled once per change of the rules, as the
		// outbox's are; one that no longer compiles (checked when it was
		// made) leaves its rule out.
		out := make([]*dataout.Rule, 0, len(list))
		for _, r := range list {
			c, err := dataout.CompileRule(r)
			if err != nil {
				inst.log.Error("compile an export rule", "rule", r.ID, "err", err)
				continue
			}
			out = append(out, c)
		}
		return out, nil
	})
	if err != nil {
		inst.log.Error("read export rules", "err", err)
		return err
	}
	var msgs []ExportMessage
	var matched []string
	device := "api"
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		device = dc.id.device
	}
	var in *dataout.Input // built for the first rule with a condition
	for _, r := range rules {
		if !tenants.MatchTopic(r.Filter, pk.TopicName) {
			continue
		}
		if r.Condition != "" {
			if in == nil {
				in = &dataout.Input{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Device: device, ClientID: cl.ID, Time: inst.env.now()}
				if !cl.Net.Inline {
					ctx, cancel := storeCtx()
					if d, found, err := inst.dir.device(ctx, inst.tenant, device); err == nil && found {
						in.Metadata = d.Metadata
					}
					cancel()
				}
			}
			// A condition that cannot be evaluated (a missing field, the
			// cost limit) does not match, as for a destination's rule.
			ok, err := r.Match(context.Background(), *in)
			if err != nil {
				inst.log.Debug("export rule condition not evaluated", "rule", r.ID, "topic", pk.TopicName, "err", err)
			}
			if !ok {
				continue
			}
		}
		msgs = append(msgs, ExportMessage{
			Topic: r.KafkaTopic, Key: []byte(device), Value: pk.Payload,
			Headers: map[string]string{"mqtt_topic": pk.TopicName, "device": device, "client_id": cl.ID, "qos": strconv.Itoa(int(pk.FixedHeader.Qos))},
		})
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

func (inst *instance) exportErrors() map[string]int64 {
	inst.errMu.Lock()
	defer inst.errMu.Unlock()
	out := make(map[string]int64, len(inst.exportErrs))
	for k, v := range inst.exportErrs {
		out[k] = v
	}
	return out
}
