package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
// id, at most dataplane.MaxPendingCommands.
type commandWaiters struct {
	mu sync.Mutex
	m  map[string]*commandWaiter
}

type commandWaiter struct {
	device string
	reply  chan packets.Packet // one reply, buffered
}

// add registers a command; false if too many are waiting.
func (c *commandWaiters) add(id, device string) (*commandWaiter, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= dataplane.MaxPendingCommands {
		return nil, false
	}
	if c.m == nil {
		c.m = map[string]*commandWaiter{}
	}
	w := &commandWaiter{device: device, reply: make(chan packets.Packet, 1)}
	c.m[id] = w
	return w, true
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
	return true
}

// OnPublish keeps replies from being retained: they answer one command.
func (h *commandHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !cl.Net.Inline && pk.FixedHeader.Retain && commandReplyTopic(pk.TopicName) {
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
	w := h.inst.cmds.take(id, device)
	if w == nil {
		h.inst.log.Info("reply to no waiting command: dropped", "device", device, "client_id", cl.ID, "topic", pk.TopicName)
		return
	}
	w.reply <- pk.Copy(false)
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
	}
	if c.Timeout == 0 {
		c.Timeout = dataplane.DefaultCommandTimeout
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
// to be queued: then it is published for the device's persistent sessions
// and nothing waits. The command passes the quotas an API publish passes;
// at most dataplane.MaxPendingCommands of a tenant wait at once.
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
	var w *commandWaiter
	if !c.Queue {
		var ok bool
		if w, ok = inst.cmds.add(id, device); !ok {
			return res, &tenants.QuotaError{Quota: "pending_commands", Limit: dataplane.MaxPendingCommands}
		}
		defer inst.cmds.remove(id)
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   res.Topic,
		Payload:     c.Payload,
		Properties: packets.Properties{
			ResponseTopic:   dataplane.CommandPrefix + device + "/reply/" + id,
			CorrelationData: []byte(id),
		},
	}
	if !c.Queue {
		// A command nobody answered in time is not worth delivering later.
		pk.Properties.MessageExpiryInterval = uint32(math.Ceil(c.Timeout.Seconds()))
	}
	start := time.Now()
	if err := inst.injectTopic(publisher{}, pk); err != nil {
		return res, err
	}
	if c.Queue {
		res.Outcome = dataplane.CommandQueued
		return res, nil
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
