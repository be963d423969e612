package broker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/tenants"
)

// Device shadows over MQTT (docs/shadows.md). A device publishes to
//
//	$roost/shadow/<device>/update   {"state": {"reported": {...}}}
//	$roost/shadow/<device>/get      (any payload)
//
// and is answered on …/update/accepted (the new shadow) or
// …/update/rejected ({"code", "message"}), and …/get/accepted or
// …/get/rejected. Whenever a shadow changes (from the API or MQTT) and its
// desired state differs from the reported one, the delta goes to
// …/update/delta.
//
// $roost stays reserved: devices publish under it only to these two
// request topics. A device may use its own shadow's topics; another's only
// if the tenant's rules grant them.
const shadowPrefix = "$roost/shadow/"

// shadowStore is what the broker needs of the directory for shadows;
// *tenants.Store has it. A directory without it has no shadows over MQTT.
type shadowStore interface {
	Shadow(ctx context.Context, tenant, device string) (tenants.Shadow, error)
	UpdateShadow(ctx context.Context, tenant, device string, u tenants.ShadowUpdate) (tenants.Shadow, error)
}

var _ shadowStore = (*tenants.Store)(nil)

// shadowTimeout bounds one read or write of a shadow.
const shadowTimeout = 5 * time.Second

// shadowTopic splits a topic (or filter) under $roost/shadow/ into the
// device it names and the rest ("update", "update/delta", ...).
func shadowTopic(topic string) (device, rest string, ok bool) {
	after, ok := strings.CutPrefix(topic, shadowPrefix)
	if !ok {
		return "", "", false
	}
	device, rest, _ = strings.Cut(after, "/")
	return device, rest, device != ""
}

// shadowRequest reports whether topic is one a device publishes to about
// a shadow: some device's update or get topic. Whether this device may is
// the ACL check's (shadowHook.OnACLCheck).
func shadowRequest(topic string) bool {
	_, rest, ok := shadowTopic(topic)
	return ok && (rest == "update" || rest == "get")
}

// shadowHook serves the shadow topics of a tenant's broker. It comes
// before accessHook: its yes to a device's own shadow topics ends the ACL
// check; its no leaves the decision to accessHook, which refuses $roost.
type shadowHook struct {
	mqtt.HookBase
	inst *instance
}

var _ mqtt.Hook = (*shadowHook)(nil)

func (h *shadowHook) ID() string { return "roost-shadow" }

var shadowHookEvents = provides(mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnPublished)

func (h *shadowHook) Provides(b byte) bool { return shadowHookEvents.has(b) }

// deviceOf is the device a client is: one connected, or a restored session.
func (inst *instance) deviceOf(cl *mqtt.Client) (*deviceConn, string) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		return dc, dc.id.device
	}
	if inst.persist != nil && cl.Net.Conn == nil && !cl.Net.Inline {
		return nil, inst.persist.deviceOf(cl.ID)
	}
	return nil, ""
}

// OnACLCheck allows a device its own shadow: publishing its update and get
// requests, and reading (subscribing to, being delivered) anything under
// $roost/shadow/<device>/. Another device's shadow topics are the rules'
// (a rule may name them). Anything else it leaves to accessHook.
func (h *shadowHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	target, rest, ok := shadowTopic(topic)
	if !ok || h.inst.shadows() == nil {
		return false
	}
	dc, device := h.inst.deviceOf(cl)
	if device == "" {
		return false
	}
	if write {
		if rest != "update" && rest != "get" {
			return false
		}
		return target == device || h.inst.allowed(device, tenants.ActionPublish, topic)
	}
	if dc != nil && dc.refusedFilter(topic) {
		return false // over max_subscriptions
	}
	if h.inst.overQueued(cl, dc, topic) {
		return false // counted by accessHook
	}
	return target == device || h.inst.allowed(device, tenants.ActionSubscribe, topic)
}

// OnPublish keeps shadow requests from being retained: they are
// requests, not state.
func (h *shadowHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !cl.Net.Inline && pk.FixedHeader.Retain && shadowRequest(pk.TopicName) {
		pk.FixedHeader.Retain = false
	}
	return pk, nil
}

// OnPublished answers a device's shadow request, once the broker took it
// (its quotas passed). It runs on the device's reader: a device waits for
// its own request, and its publish_rate bounds how many it makes.
func (h *shadowHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline || !shadowRequest(pk.TopicName) {
		return
	}
	ss := h.inst.shadows()
	if ss == nil {
		return
	}
	target, rest, _ := shadowTopic(pk.TopicName)
	_, device := h.inst.deviceOf(cl)
	ctx, cancel := context.WithTimeout(context.Background(), shadowTimeout)
	defer cancel()
	var sh tenants.Shadow
	var err error
	switch rest {
	case "get":
		sh, err = ss.Shadow(ctx, h.inst.tenant, target)
	default:
		var u tenants.ShadowUpdate
		if u, err = tenants.ParseShadowUpdate(pk.Payload); err == nil {
			u.Source = "mqtt"
			sh, err = ss.UpdateShadow(ctx, h.inst.tenant, target, u)
		}
	}
	reply := pk.TopicName + "/accepted"
	var body []byte
	if err != nil {
		reply = pk.TopicName + "/rejected"
		body = shadowRejection(err)
		h.inst.log.Info("shadow request rejected", "device", device, "topic", pk.TopicName, "err", err)
	} else if body, err = json.Marshal(sh); err != nil {
		return
	}
	if err := h.inst.server.Publish(reply, body, false, 1); err != nil {
		h.inst.log.Warn("answer a shadow request", "device", device, "topic", reply, "err", err)
	}
}

// shadowRejection is what …/rejected carries: an HTTP-like code, the
// message, and the quota a shadow over max_shadow_bytes names.
func shadowRejection(err error) []byte {
	r := struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Quota   string `json:"quota,omitempty"`
		Limit   int64  `json:"limit,omitempty"`
	}{Code: http.StatusInternalServerError, Message: "internal error"}
	var qe *tenants.QuotaError
	switch {
	case errors.As(err, &qe):
		r.Code, r.Message, r.Quota, r.Limit = http.StatusRequestEntityTooLarge, err.Error(), qe.Quota, qe.Limit
	case errors.Is(err, tenants.ErrInvalid):
		r.Code, r.Message = http.StatusBadRequest, err.Error()
	case errors.Is(err, tenants.ErrConflict):
		r.Code, r.Message = http.StatusConflict, err.Error()
	case errors.Is(err, tenants.ErrNotFound):
		r.Code, r.Message = http.StatusNotFound, err.Error()
	}
	b, _ := json.Marshal(r)
	return b
}

// shadows is the directory's shadow store, if it has one.
func (inst *instance) shadows() shadowStore {
	if inst.dir == nil {
		return nil
	}
	ss, _ := inst.dir.dir.(shadowStore)
	return ss
}

// tellDelta publishes a device's delta after its shadow changed, if its
// desired state differs from its reported one. On a tenant spread over
// nodes only its home node does, so the device hears it once.
func (inst *instance) tellDelta(ctx context.Context, device string) error {
	ss := inst.shadows()
	if ss == nil || (inst.spread && !inst.home) {
		return nil
	}
	topic := shadowPrefix + device + "/update/delta"
	if subs := inst.server.Topics.Subscribers(topic); len(subs.Subscriptions) == 0 && len(subs.Shared) == 0 {
		return nil // nobody listens
	}
	sh, err := ss.Shadow(ctx, inst.tenant, device)
	if errors.Is(err, tenants.ErrNotFound) {
		return nil // the device is gone
	}
	if err != nil {
		return err
	}
	if len(sh.State.Delta) == 0 {
		return nil
	}
	b, err := json.Marshal(struct {
		State     map[string]any `json:"state"`
		Version   int64          `json:"version"`
		Timestamp int64          `json:"timestamp"`
	}{sh.State.Delta, sh.Version, sh.Timestamp.Unix()})
	if err != nil {
		return err
	}
	if err := inst.server.Publish(topic, b, false, 1); err != nil {
		inst.log.Warn("publish a shadow delta", "device", device, "err", err)
	}
	return nil
}
