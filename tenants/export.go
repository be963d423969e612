package tenants

import (
	"regexp"
	"strings"
	"time"
)

// ExportRule sends a tenant's messages on topics matching Filter either to
// a Kafka topic of the operator's (Topic) or to one of the tenant's
// destinations (Destination, with an optional CEL Condition). The Kafka
// topic is always under the tenant's prefix, so no tenant can write into
// another's.
type ExportRule struct {
	ID         string `json:"id"`
	Filter     string `json:"filter"`
	Topic      string `json:"topic,omitempty"`
	KafkaTopic string `json:"kafka_topic,omitempty"`
	Condition  string `json:"condition,omitempty"`
	// Projection, a CEL expression, shapes what the rule sends: its value
	// as JSON instead of the message's payload. "" sends the payload.
	Projection  string    `json:"projection,omitempty"`
	Destination string    `json:"destination,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
}

// OperatorKafka is the id and name of the built-in destination that is
// the operator's Kafka export (ROOST_KAFKA_BROKERS): a rule with
// destination OperatorKafka and a topic is stored as a Kafka export rule
// (topic only, no destination), so the data plane's Kafka export writes
// what it matches, as for a rule with only a topic. No destination of a
// tenant's may take this name.
const OperatorKafka = "operator-kafka"

// OperatorKafkaDestination is the operator's Kafka export as the
// destination a tenant sees: built in, read-only, with no URL or
// settings of the tenant's.
func OperatorKafkaDestination() Destination {
	return Destination{ID: OperatorKafka, Name: OperatorKafka, Type: DestinationOperatorKafka, Headers: []string{}}
}

// KafkaTopicPrefix starts every export topic: roost.<tenant>.<topic>.
const KafkaTopicPrefix = "roost."

// ExportTopic is the Kafka topic a tenant's rule with topic name writes to.
func ExportTopic(tenant, name string) string { return KafkaTopicPrefix + tenant + "." + name }

// MaxExportRules caps a tenant's export rules: every publish is matched
// against them.
const MaxExportRules = 100

var exportTopicRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$`)

// MaxConditionLength bounds a rule's condition, and its projection, in
// bytes.
const MaxConditionLength = 4096

// ExportRuleInput creates a rule: a filter and either a Kafka topic or a
// destination (its id or name), which may come with a condition and a
// projection. Their syntax and types are checked by the caller, which
// compiles them (dataout.CompileCondition, CompileProjection); the
// directory stores them as text.
type ExportRuleInput struct {
	Filter      string `json:"filter"`
	Topic       string `json:"topic,omitempty"`
	Condition   string `json:"condition,omitempty"`
	Projection  string `json:"projection,omitempty"`
	Destination string `json:"destination,omitempty"`
}

// ToOperatorKafka reports whether the rule names the operator's Kafka
// export as its destination.
func (in *ExportRuleInput) ToOperatorKafka() bool { return in.Destination == OperatorKafka }

// Validate checks the rule.
func (in *ExportRuleInput) Validate() error {
	if err := ValidateFilter(in.Filter); err != nil {
		return invalid("filter", "%v", err)
	}
	// Any rule may match the tenant's events on their $events topics
	// (docs/events.md); no other $ topic is exported.
	op := in.ToOperatorKafka()
	if strings.HasPrefix(in.Filter, "$") && !IsEventsFilter(in.Filter) {
		return invalid("filter", "topics starting with $ are not exported (a rule may match the tenant's events: $events/...)")
	}
	// Every rule may have a condition: the outbox applies a destination's,
	// the data plane's Kafka export the operator's Kafka rules'.
	if len(in.Condition) > MaxConditionLength {
		return invalid("condition", "at most %d bytes", MaxConditionLength)
	}
	if len(in.Projection) > MaxConditionLength {
		return invalid("projection", "at most %d bytes", MaxConditionLength)
	}
	switch {
	case op && in.Topic == "":
		return invalid("topic", "a rule to "+OperatorKafka+" names its Kafka topic (topic), written as roost.<tenant>.<topic>")
	case op:
	case in.Topic != "" && in.Destination != "":
		return invalid("destination", "a rule has a Kafka topic or a destination, not both (a topic goes with destination "+OperatorKafka+" or alone)")
	case in.Destination != "":
		return nil
	}
	if !exportTopicRE.MatchString(in.Topic) {
		return invalid("topic", "must be 1 to 100 letters, digits, '.', '_' or '-', not starting with '.'")
	}
	return nil
}
