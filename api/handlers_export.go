package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

type exportStore interface {
	Rules(ctx context.Context, tenant string) ([]tenants.ExportRule, error)
	Rule(ctx context.Context, tenant, id string) (tenants.ExportRule, error)
	CreateExportRule(ctx context.Context, tenant string, in tenants.ExportRuleInput) (tenants.ExportRule, error)
	DeleteExportRule(ctx context.Context, tenant, id string) error
	DestinationByRef(ctx context.Context, tenant, ref string) (tenants.Destination, error)
	Destinations(ctx context.Context, tenant string) ([]tenants.Destination, error)
	Device(ctx context.Context, tenant, name string) (tenants.Device, error)
}

// The deliveries a rule can have, named after what delivers: the
// operator's Kafka export writes to the operator's Kafka before the
// publisher's ack; a rule with a destination of the tenant's goes through
// the data plane's outbox to that destination, a webhook or the tenant's
// own Kafka.
const (
	deliveryOperatorKafka = tenants.DestinationOperatorKafka
	deliveryWebhook       = tenants.DestinationWebhook
	deliveryKafka         = tenants.DestinationKafka
)

// exportRule is a rule with how many of its writes Kafka refused since the
// data plane started, and what delivers what it matches. A Kafka export
// rule (topic only) names the built-in destination operator-kafka.
type exportRule struct {
	tenants.ExportRule
	Errors   int64  `json:"errors"`
	Delivery string `json:"delivery"`
}

// newExportRule describes a rule; types maps the tenant's destination ids
// to their types (a destination a rule uses cannot be deleted; one missing
// from types is taken for a webhook, the first type there was).
func newExportRule(r tenants.ExportRule, errs int64, types map[string]string) exportRule {
	d := deliveryOperatorKafka
	switch {
	case r.Destination == "":
		r.Destination = tenants.OperatorKafka
	case types[r.Destination] == deliveryKafka:
		d = deliveryKafka
	default:
		d = deliveryWebhook
	}
	return exportRule{ExportRule: r, Errors: errs, Delivery: d}
}

// destinationTypes maps a tenant's destination ids to their types.
func destinationTypes(ctx context.Context, es exportStore, tenant string) (map[string]string, error) {
	list, err := es.Destinations(ctx, tenant)
	if err != nil {
		return nil, err
	}
	types := make(map[string]string, len(list))
	for _, d := range list {
		types[d.ID] = d.Type
	}
	return types, nil
}

func handleExportList(es exportStore, dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		tenant := chi.URLParam(r, "tenant")
		rules, err := es.Rules(r.Context(), tenant)
		if err != nil {
			return err
		}
		types, err := destinationTypes(r.Context(), es, tenant)
		if err != nil {
			return err
		}
		var errs map[string]int64
		if dp != nil {
			errs = dp.ExportErrors(tenant)
		}
		items := make([]exportRule, len(rules))
		for i, rule := range rules {
			items[i] = newExportRule(rule, errs[rule.ID], types)
		}
		writeJSON(w, http.StatusOK, newList(items, ""))
		return nil
	}
}

// ruleProblem turns a rule's condition or projection that does not
// compile into a 400 pointing into it; prefix goes before the field's
// name ("rule." for a rule given inline to a test).
func ruleProblem(prefix string, err error) error {
	var re *dataout.RuleError
	if errors.As(err, &re) {
		field := prefix + re.Field
		return &httpError{status: http.StatusBadRequest, code: "invalid", field: field, line: re.Err.Line, col: re.Err.Column,
			msg: field + ": " + re.Err.Error()}
	}
	return err
}

func handleExportCreate(es exportStore, budgets *dataout.Budgets) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.ExportRuleInput
		if err := decode(r, &in); err != nil {
			return err
		}
		if err := in.Validate(); err != nil {
			return err
		}
		tenant := chi.URLParam(r, "tenant")
		// Compiled within the tenant's share, as a rule test is.
		budget := budgets.Of(tenant)
		if err := waitRules(r.Context(), budget); err != nil {
			return err
		}
		start := time.Now()
		_, err := dataout.CompileRule(tenants.ExportRule{Filter: in.Filter, Condition: in.Condition, Projection: in.Projection})
		budget.Spend(time.Since(start))
		if err != nil {
			return ruleProblem("", err)
		}
		rule, err := es.CreateExportRule(r.Context(), tenant, in)
		if err != nil {
			return err
		}
		types, err := destinationTypes(r.Context(), es, tenant)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, newExportRule(rule, 0, types))
		return nil
	}
}

func handleExportDelete(es exportStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := es.DeleteExportRule(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

// ruleTest is a request to run a rule, given inline or by id, against a
// sample message.
type ruleTest struct {
	Rule    *tenants.ExportRuleInput `json:"rule"`
	RuleID  string                   `json:"rule_id"`
	Message struct {
		Topic string `json:"topic"`
		// Payload is text; PayloadBase64, bytes. At most one.
		Payload       *string    `json:"payload"`
		PayloadBase64 *string    `json:"payload_base64"`
		QoS           byte       `json:"qos"`
		Device        string     `json:"device"`
		ClientID      string     `json:"client_id"`
		Time          *time.Time `json:"time"`
	} `json:"message"`
}

// ruleTestResult says whether the rule matches and what would be sent.
type ruleTestResult struct {
	Matched bool `json:"matched"`
	// Reason says why not: the filter, the condition being false, or the
	// condition's or the projection's evaluation error.
	Reason string `json:"reason,omitempty"`
	// Payload is what the rule's projection made of the message, if it
	// has one: what it sends instead of the message's payload.
	Payload     json.RawMessage `json:"payload,omitempty"`
	Destination string          `json:"destination,omitempty"`
	KafkaTopic  string          `json:"kafka_topic,omitempty"`
	Body        json.RawMessage `json:"body,omitempty"`
	Delivery    string          `json:"delivery"`
}

func bad(field, msg string) error {
	return &httpError{status: http.StatusBadRequest, code: "invalid", field: field, msg: field + ": " + msg}
}

// handleRuleTest runs a rule against a sample message without sending
// anything. The device's metadata is the named device's, in this tenant.
func handleRuleTest(es exportStore, now func() time.Time, budgets *dataout.Budgets) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		tenant := chi.URLParam(r, "tenant")
		var in ruleTest
		if err := decode(r, &in); err != nil {
			return err
		}
		var rule tenants.ExportRule
		switch {
		case (in.Rule == nil) == (in.RuleID == ""):
			return bad("rule", "give the rule inline (rule) or by id (rule_id), one of them")
		case in.RuleID != "":
			got, err := es.Rule(r.Context(), tenant, in.RuleID)
			if errors.Is(err, tenants.ErrNotFound) {
				return bad("rule_id", "no rule "+in.RuleID+" in this tenant")
			}
			if err != nil {
				return err
			}
			rule = got
		default:
			if err := in.Rule.Validate(); err != nil {
				var fe *tenants.FieldError
				if errors.As(err, &fe) {
					return bad("rule."+fe.Field, fe.Message)
				}
				return err
			}
			rule = tenants.ExportRule{Filter: in.Rule.Filter, Topic: in.Rule.Topic, Condition: in.Rule.Condition, Projection: in.Rule.Projection}
			if in.Rule.Topic != "" {
				rule.KafkaTopic = tenants.ExportTopic(tenant, in.Rule.Topic)
			}
			if in.Rule.Destination != "" && !in.Rule.ToOperatorKafka() {
				d, err := es.DestinationByRef(r.Context(), tenant, in.Rule.Destination)
				if errors.Is(err, tenants.ErrNotFound) {
					return bad("rule.destination", "no destination "+in.Rule.Destination+" in this tenant (give its id or name)")
				}
				if err != nil {
					return err
				}
				rule.Destination = d.ID
			}
		}
		// The tenant's tests share a budget of this process's CPU, as its
		// messages' rules share one on a data-plane node. Compiling counts
		// as well as evaluating: a condition of nested literals takes a
		// tenth of a second to compile and microseconds to evaluate.
		budget := budgets.Of(tenant)
		if err := waitRules(r.Context(), budget); err != nil {
			return err
		}
		start := time.Now()
		compiled, err := dataout.CompileRule(rule)
		budget.Spend(time.Since(start))
		if err != nil {
			return ruleProblem("rule.", err)
		}

		m := in.Message
		if err := tenants.ValidateTopic(m.Topic); err != nil {
			return bad("message.topic", err.Error())
		}
		if m.QoS > 2 {
			return bad("message.qos", "must be 0, 1 or 2")
		}
		var payload []byte
		switch {
		case m.Payload != nil && m.PayloadBase64 != nil:
			return bad("message.payload", "give payload or payload_base64, not both")
		case m.Payload != nil:
			payload = []byte(*m.Payload)
		case m.PayloadBase64 != nil:
			if payload, err = base64.StdEncoding.DecodeString(*m.PayloadBase64); err != nil {
				return bad("message.payload_base64", "not standard base64")
			}
		}
		input := dataout.Input{Topic: m.Topic, Payload: payload, QoS: m.QoS, Device: m.Device, ClientID: m.ClientID, Time: now()}
		if m.Time != nil {
			input.Time = *m.Time
		}
		if input.ClientID == "" {
			input.ClientID = m.Device
		}
		if m.Device != "" {
			d, err := es.Device(r.Context(), tenant, m.Device)
			if errors.Is(err, tenants.ErrNotFound) {
				return bad("message.device", "no device "+m.Device+" in this tenant")
			}
			if err != nil {
				return err
			}
			input.Metadata = d.Metadata
		}

		types, err := destinationTypes(r.Context(), es, tenant)
		if err != nil {
			return err
		}
		res := newExportRule(rule, 0, types)
		out := ruleTestResult{Destination: res.Destination, KafkaTopic: rule.KafkaTopic, Delivery: res.Delivery}
		if err := waitRules(r.Context(), budget); err != nil {
			return err
		}
		start = time.Now()
		ok, sent, err := compiled.Apply(r.Context(), input)
		budget.Spend(time.Since(start))
		var pe *dataout.ProjectionError
		switch {
		case errors.As(err, &pe):
			out.Reason = "the projection could not be evaluated: " + pe.Err.Error()
		case err != nil:
			out.Reason = "the condition could not be evaluated: " + err.Error()
		case !ok && !tenants.MatchTopic(rule.Filter, m.Topic):
			out.Reason = "the topic does not match the filter"
		case !ok:
			out.Reason = "the condition is false"
		}
		out.Matched = ok
		if ok && rule.Projection != "" {
			out.Payload = json.RawMessage(sent)
		}
		if ok && rule.Destination != "" {
			out.Body = dataout.Body(dataout.Batch{Tenant: tenant, Destination: rule.Destination, Messages: []dataout.Message{{
				Topic: input.Topic, Payload: sent, QoS: input.QoS, Device: input.Device, ClientID: input.ClientID, Time: input.Time,
			}}})
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	}
}

// waitRules waits, a second at most, until the rules the tenant's
// requests compile and test are within their share of the CPU (budget),
// or answers 429.
func waitRules(ctx context.Context, budget *dataout.Budget) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := budget.Wait(ctx); err != nil {
		return tenants.Throttled(time.Second, "the tenant's rule tests and new rules have used their share of the CPU: try again shortly")
	}
	return nil
}
