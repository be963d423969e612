package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// Commands with replies (docs/commands.md). The hub publishes a command to
//
//	$roost/commands/<device>/<name>/<id>
//
// at QoS 1, with the MQTT 5 response topic $roost/commands/<device>/reply/<id>
// and the id as correlation data, and waits for a PUBLISH from the device
// to that reply topic. A 3.1.1 device, which sees no properties, reads the
// id from the topic's last level and replies to the same topic.
//
// $roost stays reserved: a device may read its own command topics and
// publish to its own reply topics, nothing else under them; replies are
// delivered to nobody (not even the device subscribed to its
// $roost/commands/<device>/#). A reply whose correlation data is not its
// command's id, or whose id is no command's waiting here, is dropped.

// commandTopic splits a topic (or filter) under $roost/commands/ into the
// device it names and the rest.
func commandTopic(topic string) (device, rest string, ok bool) {
	after, ok := strings.CutPrefix(topic, dataplane.CommandPrefix)
	if !ok {
		return "", "", false
	}
	device, rest, _ = strings.Cut(after, "/")
	return device, rest, device != ""
}

// commandReply splits a reply topic, $roost/commands/<device>/reply/<id>.
func commandReply(topic string) (device, id string, ok bool) {
	device, rest, ok := commandTopic(topic)
	if !ok {
		return "", "", false
	}
	id, ok = strings.CutPrefix(rest, "reply/")
	return device, id, ok && id != "" && !strings.ContainsAny(id, "/+#")
}

// commandReplyTopic reports whether topic is some device's reply topic.
// Whether this device may publish to it is the ACL check's.
func commandReplyTopic(topic string) bool {
	_, _, ok := commandReply(topic)
	return ok
}

// commandWaiters holds a tenant's commands waiting for their replies, by
// id, at most the tenant's max_pending_commands.
type commandWaiters struct {
	mu sync.Mutex
	m  map[string]*commandWaiter
}

type commandWaiter struct {
	device   string
	deadline time.Time
	reply    chan packets.Packet // one reply, buffered
}

// add registers a command waiting until deadline; past limit waiting it
// is a *tenants.QuotaError, in a *tenants.RetryError saying when the
// first of them times out.
func (c *commandWaiters) add(id, device string, deadline time.Time, limit int64) (*commandWaiter, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if int64(len(c.m)) >= limit {
		var first time.Time
		for _, w := range c.m {
			if first.IsZero() || w.deadline.Before(first) {
				first = w.deadline
			}
		}
		wait := max(time.Until(first), time.Second)
		return nil, &tenants.RetryError{Kind: &tenants.QuotaError{Quota: "max_pending_commands", Limit: limit}, After: wait,
			Msg: fmt.Sprintf("%d of the tenant's commands wait for their replies on this node (max_pending_commands); the first times out in %s", len(c.m), wait.Round(time.Second))}
	}
	if c.m == nil {
		c.m = map[string]*commandWaiter{}
	}
	w := &commandWaiter{device: device, deadline: deadline, reply: make(chan packets.Packet, 1)}
	c.m[id] = w
	return w, nil
}

func (c *commandWaiters) remove(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

// take removes and returns the device's command with this id, if it is
// waiting.
func (c *commandWaiters) take(id, device string) *commandWaiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.m[id]
	if w == nil || w.device != device {
		return nil
	}
	delete(c.m, id)
	return w
}

func (c *commandWaiters) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// commandHook lets a device read its commands and send its replies, and
// hands each reply to its command. It comes before accessHook: its yes
// ends the ACL check, its no leaves the decision to accessHook, which
// refuses $roost.
type commandHook struct {
	mqtt.HookBase
	inst *instance
}

var _ mqtt.Hook = (*commandHook)(nil)

func (h *commandHook) ID() string { return "roost-command" }

var commandHookEvents = provides(mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnPublished)

func (h *commandHook) Provides(b byte) bool { return commandHookEvents.has(b) }

// OnACLCheck allows a device to publish to its own reply topics and to
// read (subscribe to, be delivered) its own command topics, but not its
// reply topics: a reply goes to the command, not back to the device.
func (h *commandHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	target, rest, ok := commandTopic(topic)
	if !ok {
		return false
	}
	dc, device := h.inst.deviceOf(cl)
	if device == "" || target != device {
		return false
	}
	if write {
		return commandReplyTopic(topic)
	}
	if rest == "reply" || strings.HasPrefix(rest, "reply/") {
		return false
	}
	if dc != nil && dc.refusedFilter(topic) {
		return false // over max_subscriptions
	}
	return !h.inst.overQueued(cl, dc, topic) // counted by accessHook
}

// OnPublish keeps replies from being retained: they answer one command.
// A command the hub publishes (through mochi's inline client, of no
// protocol version) is marked MQTT 5, so that its message expiry holds:
// mochi expires a waiting message only if it came as MQTT 5.
func (h *commandHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		if pk.Properties.MessageExpiryInterval > 0 && strings.HasPrefix(pk.TopicName, dataplane.CommandPrefix) {
			pk.ProtocolVersion = 5
		}
		return pk, nil
	}
	if pk.FixedHeader.Retain && commandReplyTopic(pk.TopicName) {
		pk.FixedHeader.Retain = false
	}
	return pk, nil
}

// OnPublished hands a device's reply to the command waiting for it, once
// the broker took it (its quotas passed).
func (h *commandHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	target, id, ok := commandReply(pk.TopicName)
	if !ok {
		return
	}
	_, device := h.inst.deviceOf(cl)
	if device != target {
		return
	}
	if cd := pk.Properties.CorrelationData; len(cd) > 0 && string(cd) != id {
		h.inst.log.Info("command reply with the wrong correlation data: dropped", "device", device, "client_id", cl.ID, "topic", pk.TopicName)
		return
	}
	if w := h.inst.cmds.take(id, device); w != nil {
		w.reply <- pk.Copy(false)
		return
	}
	// Not waited for here: perhaps a queued command's, which is recorded.
	cs := h.inst.commands()
	if cs == nil {
		h.inst.log.Info("reply to no waiting command: dropped", "device", device, "client_id", cl.ID, "topic", pk.TopicName)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), shadowTimeout)
	defer cancel()
	ok, err := cs.ReplyCommand(ctx, h.inst.tenant, device, id, pk.Payload, pk.Properties.ContentType)
	switch {
	case errors.Is(err, tenants.ErrReplyTooLarge):
		h.inst.log.Info("reply to a queued command too large to record: dropped", "device", device, "client_id", cl.ID, "topic", pk.TopicName,
			"bytes", len(pk.Payload), "max", tenants.MaxRecordedReply)
	case err != nil:
		h.inst.log.Warn("record a queued command's reply", "device", device, "client_id", cl.ID, "topic", pk.TopicName, "err", err)
	case !ok:
		h.inst.log.Info("reply to no waiting or queued command (unknown, expired or answered): dropped", "device", device, "client_id", cl.ID, "topic", pk.TopicName)
	}
}

// commandStore is what the broker needs of the directory to record queued
// commands and their replies; *tenants.Store has it. A directory without
// it queues commands unrecorded and drops their replies.
type commandStore interface {
	QueueCommand(ctx context.Context, tenant string, c tenants.QueuedCommand, ttl time.Duration) (tenants.QueuedCommand, error)
	ForgetCommand(ctx context.Context, tenant, id string) error
	ReplyCommand(ctx context.Context, tenant, device, id string, reply []byte, contentType string) (bool, error)
}

var _ commandStore = (*tenants.Store)(nil)

// commands is the directory's command store, if it has one.
func (inst *instance) commands() commandStore {
	if inst.dir == nil {
		return nil
	}
	cs, _ := inst.dir.dir.(commandStore)
	return cs
}

// validateCommand checks a command and gives it its default timeout.
func validateCommand(c *dataplane.Command) error {
	switch {
	case c.Name == "" || len(c.Name) > 64:
		return &tenants.FieldError{Field: "name", Message: "must be 1 to 64 bytes"}
	case !utf8.ValidString(c.Name) || strings.ContainsAny(c.Name, "/+#$\x00") || c.Name == "reply":
		return &tenants.FieldError{Field: "name", Message: "must be one topic level: UTF-8 without / + # $, and not reply"}
	case c.Timeout < 0 || c.Timeout > dataplane.MaxCommandTimeout:
		return &tenants.FieldError{Field: "timeout", Message: fmt.Sprintf("must be at most %d seconds", int(dataplane.MaxCommandTimeout.Seconds()))}
	case c.TTL != 0 && !c.Queue:
		return &tenants.FieldError{Field: "ttl", Message: "is for queued commands; a command that waits for its reply expires at its timeout"}
	case c.TTL < 0 || c.TTL > dataplane.MaxCommandTTL:
		return &tenants.FieldError{Field: "ttl", Message: fmt.Sprintf("must be at most %d seconds", int(dataplane.MaxCommandTTL.Seconds()))}
	}
	if c.Timeout == 0 {
		c.Timeout = dataplane.DefaultCommandTimeout
	}
	if c.Queue && c.TTL == 0 {
		c.TTL = dataplane.DefaultCommandTTL
	}
	return nil
}

func newCommandID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Command publishes a command to a device connected to this node and
// waits for its reply, or for the command's timeout. A device with no
// connection here gets nothing (outcome offline), unless the command is
// to be queued: then it is recorded (with the directory, which records the
// reply when it comes), published for the device's persistent sessions
// with its TTL as message expiry, and nothing waits. The command passes
// the quotas an API publish passes; at most the tenant's
// max_pending_commands wait here at once, and as many queued ones are
// pending.
func (h *Hub) Command(ctx context.Context, tenant, device string, c dataplane.Command) (dataplane.CommandResult, error) {
	if err := validateCommand(&c); err != nil {
		return dataplane.CommandResult{}, err
	}
	t, err := h.activeTenant(ctx, tenant)
	if err != nil {
		return dataplane.CommandResult{}, err
	}
	if !c.Queue {
		if inst := h.reg.running(tenant); inst == nil || len(inst.live.connections(device)) == 0 {
			return dataplane.CommandResult{Outcome: dataplane.CommandOffline}, nil
		}
	}
	inst, err := h.reg.acquire(t)
	if err != nil {
		return dataplane.CommandResult{}, err
	}
	defer h.reg.release(inst)
	id := newCommandID()
	res := dataplane.CommandResult{ID: id, Topic: dataplane.CommandPrefix + device + "/" + c.Name + "/" + id}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   res.Topic,
		Payload:     c.Payload,
		Properties: packets.Properties{
			ResponseTopic:   dataplane.CommandPrefix + device + "/reply/" + id,
			CorrelationData: []byte(id),
		},
	}
	if c.Queue {
		// A queued command is not delivered after its TTL: the message
		// expires in the device's session queue, and a reply after it is
		// ignored.
		pk.Properties.MessageExpiryInterval = uint32(math.Ceil(c.TTL.Seconds()))
		res.ExpiresAt = h.now().Add(c.TTL).UTC()
		cs := inst.commands()
		if cs != nil {
			qc, err := cs.QueueCommand(ctx, tenant, tenants.QueuedCommand{ID: id, Device: device, Name: c.Name, Topic: res.Topic}, c.TTL)
			if err != nil {
				return dataplane.CommandResult{}, err
			}
			res.ExpiresAt = qc.ExpiresAt
		}
		if err := inst.injectTopic(publisher{}, pk); err != nil {
			if cs != nil {
				if ferr := cs.ForgetCommand(context.WithoutCancel(ctx), tenant, id); ferr != nil {
					inst.log.Warn("forget a command not published", "device", device, "id", id, "err", ferr)
				}
			}
			return res, err
		}
		res.Outcome = dataplane.CommandQueued
		return res, nil
	}
	start := time.Now()
	w, err := inst.cmds.add(id, device, start.Add(c.Timeout), inst.quotas().MaxPendingCommands)
	if err != nil {
		return res, err
	}
	defer inst.cmds.remove(id)
	// A command nobody answered in time is not worth delivering later.
	pk.Properties.MessageExpiryInterval = uint32(math.Ceil(c.Timeout.Seconds()))
	if err := inst.injectTopic(publisher{}, pk); err != nil {
		return res, err
	}
	timer := time.NewTimer(c.Timeout)
	defer timer.Stop()
	select {
	case rp := <-w.reply:
		res.Outcome, res.Reply, res.ReplyContentType, res.Took = dataplane.CommandReplied, rp.Payload, rp.Properties.ContentType, time.Since(start)
		return res, nil
	case <-timer.C:
		res.Outcome = dataplane.CommandTimeout
		return res, nil
	case <-ctx.Done():
		return res, ctx.Err()
	}
}
