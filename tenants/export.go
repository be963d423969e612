package tenants

import (
	"regexp"
	"strings"
	"time"
)

// ExportRule sends a tenant's messages on topics matching Filter to a Kafka
// topic. The Kafka topic is always under the tenant's prefix, so no tenant
// can write into another's.
type ExportRule struct {
	ID         string    `json:"id"`
	Filter     string    `json:"filter"`
	Topic      string    `json:"topic"`
	KafkaTopic string    `json:"kafka_topic"`
	CreatedAt  time.Time `json:"created_at"`
}

// KafkaTopicPrefix starts every export topic: roost.<tenant>.<topic>.
const KafkaTopicPrefix = "roost."

// ExportTopic is the Kafka topic a tenant's rule with topic name writes to.
func ExportTopic(tenant, name string) string { return KafkaTopicPrefix + tenant + "." + name }

// MaxExportRules caps a tenant's export rules: every publish is matched
// against them.
const MaxExportRules = 100

var exportTopicRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$`)

// ExportRuleInput creates an export rule.
type ExportRuleInput struct {
	Filter string `json:"filter"`
	Topic  string `json:"topic"`
}

// Validate checks the rule.
func (in *ExportRuleInput) Validate() error {
	if err := ValidateFilter(in.Filter); err != nil {
		return invalid("filter", "%v", err)
	}
	if strings.HasPrefix(in.Filter, "$") {
		return invalid("filter", "topics starting with $ are not exported")
	}
	if !exportTopicRE.MatchString(in.Topic) {
		return invalid("topic", "must be 1 to 100 letters, digits, '.', '_' or '-', not starting with '.'")
	}
	return nil
}
