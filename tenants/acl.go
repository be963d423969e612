package tenants

import (
	"strings"
	"time"
)

// Effect is what a matching ACL rule decides.
type Effect string

// The effects.
const (
	Allow Effect = "allow"
	Deny  Effect = "deny"
)

// Action is what a device wants to do with a topic.
type Action string

// The actions. ActionAll, in a rule, matches both others.
const (
	ActionPublish   Action = "publish"
	ActionSubscribe Action = "subscribe"
	ActionAll       Action = "all"
)

// AnyDevice in a rule's Device field matches every device.
const AnyDevice = "*"

// DevicePlaceholder in a rule's topic filter stands for the device's name.
// Device names cannot contain wildcards or '/', so the substitution cannot
// widen a filter.
const DevicePlaceholder = "${device}"

// ACLRule is one entry of a tenant's ordered access list. The first rule that
// matches a request decides it; a request no rule matches is denied.
type ACLRule struct {
	ID        string    `json:"id"`
	Position  int       `json:"position"`
	Effect    Effect    `json:"effect"`
	Action    Action    `json:"action"`
	Topic     string    `json:"topic"`
	Device    string    `json:"device"`
	CreatedAt time.Time `json:"created_at"`
}

// Matches reports whether the rule applies to device doing action on topic.
// For a subscription, topic is the requested filter and the rule applies only
// if its filter covers all of it; delivery checks each message again.
func (r ACLRule) Matches(device string, action Action, topic string) bool {
	if r.Device != AnyDevice && r.Device != device {
		return false
	}
	if r.Action != ActionAll && r.Action != action {
		return false
	}
	return FilterCovers(strings.ReplaceAll(r.Topic, DevicePlaceholder, device), topic)
}

// CheckACL decides whether device may do action on topic under rules, which
// must be in position order. It returns the deciding rule, or nil when no rule
// matched. A subscription to "$share/<group>/<filter>" is checked against
// <filter>.
func CheckACL(rules []ACLRule, device string, action Action, topic string) (bool, *ACLRule) {
	if action == ActionSubscribe {
		topic = shareFilter(topic)
	}
	for i := range rules {
		if rules[i].Matches(device, action, topic) {
			return rules[i].Effect == Allow, &rules[i]
		}
	}
	return false, nil
}

// shareFilter returns the filter inside a shared subscription, or f itself.
func shareFilter(f string) string {
	if rest, ok := strings.CutPrefix(f, "$share/"); ok {
		if _, filter, ok := strings.Cut(rest, "/"); ok {
			return filter
		}
	}
	return f
}

// DefaultACLRule is the rule every new tenant starts with: every device may
// publish and subscribe everywhere in its tenant. It is an ordinary rule that
// the tenant can edit or delete.
func DefaultACLRule() ACLRuleInput {
	return ACLRuleInput{Effect: Allow, Action: ActionAll, Topic: "#", Device: AnyDevice}
}

// ACLRuleInput creates a rule. Position nil appends it; 0 puts it first.
type ACLRuleInput struct {
	Effect   Effect `json:"effect"`
	Action   Action `json:"action"`
	Topic    string `json:"topic"`
	Device   string `json:"device,omitempty"`
	Position *int   `json:"position,omitempty"`
}

// Validate checks the rule and fills in defaults.
func (in *ACLRuleInput) Validate() error {
	if in.Effect != Allow && in.Effect != Deny {
		return invalid("effect", "must be allow or deny")
	}
	if in.Action != ActionPublish && in.Action != ActionSubscribe && in.Action != ActionAll {
		return invalid("action", "must be publish, subscribe or all")
	}
	if in.Device == "" {
		in.Device = AnyDevice
	}
	if in.Device != AnyDevice && !ValidDeviceName(in.Device) {
		return invalid("device", "must be * or a device name")
	}
	if in.Position != nil && *in.Position < 0 {
		return invalid("position", "must not be negative")
	}
	return validateRuleTopic(in.Topic)
}

func validateRuleTopic(topic string) error {
	// Validate the filter as it will be used: with a device name in place of
	// the placeholder. Any other "${" is a typo, not a placeholder.
	f := strings.ReplaceAll(topic, DevicePlaceholder, "d")
	if strings.Contains(f, "${") {
		return invalid("topic", "the only placeholder is ${device}")
	}
	if err := ValidateFilter(f); err != nil {
		return invalid("topic", "%v", err)
	}
	if f == "$SYS" || strings.HasPrefix(f, "$SYS/") || strings.HasPrefix(f, "$share/") {
		return invalid("topic", "$SYS and $share topics cannot be granted")
	}
	return nil
}

// ACLCheck asks whether device may do action on topic.
type ACLCheck struct {
	Device string `json:"device"`
	Action Action `json:"action"`
	Topic  string `json:"topic"`
}

// Validate checks the question.
func (c *ACLCheck) Validate() error {
	if !ValidDeviceName(c.Device) {
		return invalid("device", "must be a device name")
	}
	switch c.Action {
	case ActionPublish:
		if err := ValidateTopic(c.Topic); err != nil {
			return invalid("topic", "%v", err)
		}
	case ActionSubscribe:
		if err := ValidateFilter(shareFilter(c.Topic)); err != nil {
			return invalid("topic", "%v", err)
		}
	default:
		return invalid("action", "must be publish or subscribe")
	}
	return nil
}
