package tenants

import (
	"regexp"
	"slices"
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

// The other placeholders: ${group} stands for the rule's group, or, in a
// rule that names none, for each group the device is in in turn (the rule
// matches if it matches for one of them); ${metadata.<key>} for the value
// of the device's metadata key.
const (
	GroupPlaceholder    = "${group}"
	metadataPlaceholder = "${metadata."
)

// ACLSubject is who an ACL question is asked for: a device, with the
// groups and metadata its rules may name.
type ACLSubject struct {
	Device   string
	Groups   []string
	Metadata map[string]string
}

// Subject is the device as an ACL subject.
func (d Device) Subject() ACLSubject {
	return ACLSubject{Device: d.Name, Groups: d.Groups, Metadata: d.Metadata}
}

// NeedsSubject reports whether deciding by rules needs more of a device
// than its name: a rule names a group, or uses ${group} or ${metadata.…}.
func NeedsSubject(rules []ACLRule) bool {
	for _, r := range rules {
		if r.Group != "" || strings.Contains(r.Topic, GroupPlaceholder) || strings.Contains(r.Topic, metadataPlaceholder) {
			return true
		}
	}
	return false
}

// safeValue reports whether a group or metadata value may stand in a
// filter: not empty, and without a wildcard, a level separator, '$' (which
// could make a level "$SYS") or NUL. An unsafe value never widens a rule.
func safeValue(v string) bool {
	return v != "" && !strings.ContainsAny(v, "+#/$\x00")
}

// ACLRule is one entry of a tenant's ordered access list. The first rule that
// matches a request decides it; a request no rule matches is denied.
type ACLRule struct {
	ID        string    `json:"id"`
	Position  int       `json:"position"`
	Effect    Effect    `json:"effect"`
	Action    Action    `json:"action"`
	Topic     string    `json:"topic"`
	Device    string    `json:"device"`
	Group     string    `json:"group,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Matches reports whether the rule applies to sub doing action on topic.
// For a subscription, topic is the requested filter and the rule applies only
// if its filter covers all of it; delivery checks each message again.
//
// A placeholder the device has no safe value for (see safeValue) never
// widens the rule: an allow rule then matches nothing, and a deny rule
// matches as if the level holding it were '+' (any value it could have had).
func (r ACLRule) Matches(sub ACLSubject, action Action, topic string) bool {
	if r.Device != AnyDevice && r.Device != sub.Device {
		return false
	}
	if r.Group != "" && !slices.Contains(sub.Groups, r.Group) {
		return false
	}
	if r.Action != ActionAll && r.Action != action {
		return false
	}
	match := func(group string) bool {
		f, ok := r.filter(sub, group)
		return (ok || r.Effect == Deny) && FilterCovers(f, topic)
	}
	if r.Group != "" || len(sub.Groups) == 0 || !strings.Contains(r.Topic, GroupPlaceholder) {
		return match(r.Group)
	}
	for _, g := range sub.Groups {
		if match(g) {
			return true
		}
	}
	return false
}

// filter is the rule's topic filter for sub, with group standing for
// ${group}. ok is false when a placeholder has no safe value; the filter
// is then the deny rule's widest (that level '+').
func (r ACLRule) filter(sub ACLSubject, group string) (string, bool) {
	if !strings.Contains(r.Topic, "${") {
		return r.Topic, true
	}
	levels := strings.Split(r.Topic, "/")
	ok := true
	for i, l := range levels {
		if !strings.Contains(l, "${") {
			continue
		}
		v, good := expand(l, sub, group)
		if !good {
			ok = false
			v = "+"
		}
		levels[i] = v
	}
	return strings.Join(levels, "/"), ok
}

// expand replaces the placeholders in one level of a filter.
func expand(level string, sub ACLSubject, group string) (string, bool) {
	var b strings.Builder
	for {
		i := strings.Index(level, "${")
		if i < 0 {
			b.WriteString(level)
			return b.String(), true
		}
		j := strings.IndexByte(level[i:], '}')
		if j < 0 {
			return "", false
		}
		name := level[i+2 : i+j]
		var v string
		switch {
		case name == "device":
			v = sub.Device
		case name == "group":
			v = group
		case strings.HasPrefix(name, "metadata."):
			v = sub.Metadata[strings.TrimPrefix(name, "metadata.")]
		}
		if !safeValue(v) {
			return "", false
		}
		b.WriteString(level[:i])
		b.WriteString(v)
		level = level[i+j+1:]
	}
}

// CheckACL decides whether sub may do action on topic under rules, which
// must be in position order. It returns the deciding rule, or nil when no rule
// matched. A subscription to "$share/<group>/<filter>" is checked against
// <filter>.
func CheckACL(rules []ACLRule, sub ACLSubject, action Action, topic string) (bool, *ACLRule) {
	if action == ActionSubscribe {
		topic = SharedFilter(topic)
	}
	for i := range rules {
		if rules[i].Matches(sub, action, topic) {
			return rules[i].Effect == Allow, &rules[i]
		}
	}
	return false, nil
}

// SharedFilter returns the filter inside a shared subscription
// ("$share/<group>/<filter>"), or f itself. The prefix is matched in any
// case, as mochi matches it: "$SHARE/g/x" is a shared subscription to x
// there, and checked as one here.
func SharedFilter(f string) string {
	if len(f) > 7 && strings.EqualFold(f[:7], "$share/") {
		if _, filter, ok := strings.Cut(f[7:], "/"); ok {
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
	Group    string `json:"group,omitempty"`
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
	if in.Group != "" {
		if !ValidGroupName(in.Group) {
			return invalid("group", "must be a group name")
		}
		if in.Device != AnyDevice {
			return invalid("group", "a rule names a device or a group, not both")
		}
	}
	if in.Position != nil && *in.Position < 0 {
		return invalid("position", "must not be negative")
	}
	return validateRuleTopic(in.Topic)
}

var metadataPlaceholderRE = regexp.MustCompile(`\$\{metadata\.[^{}$/]{1,64}\}`)

func validateRuleTopic(topic string) error {
	// Validate the filter as it will be used: with a value in place of each
	// placeholder. Any other "${" is a typo, not a placeholder.
	f := strings.ReplaceAll(topic, DevicePlaceholder, "d")
	f = strings.ReplaceAll(f, GroupPlaceholder, "g")
	f = metadataPlaceholderRE.ReplaceAllString(f, "m")
	if strings.Contains(f, "${") {
		return invalid("topic", "the placeholders are ${device}, ${group} and ${metadata.<key>}")
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
		if err := ValidateFilter(SharedFilter(c.Topic)); err != nil {
			return invalid("topic", "%v", err)
		}
	default:
		return invalid("action", "must be publish or subscribe")
	}
	return nil
}
