package web

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// webhookTools are what the webhooks page's writes need: the sealer
// (keyed by the operator token, as the API's), the sender of send tests
// with the hub's address policy, and the send tests' throttle.
type webhookTools struct {
	sealer *dataout.Sealer
	sender *dataout.Sender
	mu     sync.Mutex
	tests  map[string][]time.Time // tenant → send tests in the last minute
}

// sendTestsPerMinute is how many send tests a tenant may run a minute
// from the console (the API allows as many on its own).
const sendTestsPerMinute = 10

func newWebhookTools(cfg Config) (*webhookTools, error) {
	sealer := cfg.Sealer
	if sealer == nil {
		var err error
		if sealer, err = dataout.NewSealer(dataout.KeyFromToken(cfg.AdminToken)); err != nil {
			return nil, err
		}
	}
	sender := cfg.Webhooks
	if sender == nil {
		g, err := dataout.NewGuard("", false)
		if err != nil {
			return nil, err
		}
		if sender, err = dataout.NewSender(dataout.SenderConfig{Guard: g, Now: cfg.Now}); err != nil {
			return nil, err
		}
	}
	return &webhookTools{sealer: sealer, sender: sender, tests: map[string][]time.Time{}}, nil
}

// takeTest counts a send test; false when the tenant ran its share.
func (wt *webhookTools) takeTest(tenant string, now time.Time) bool {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	recent := wt.tests[tenant][:0]
	for _, at := range wt.tests[tenant] {
		if now.Sub(at) < time.Minute {
			recent = append(recent, at)
		}
	}
	if len(recent) >= sendTestsPerMinute {
		wt.tests[tenant] = recent
		return false
	}
	wt.tests[tenant] = append(recent, now)
	return true
}

// webhookRow is one destination on the webhooks page.
type webhookRow struct {
	tenants.Destination
	// Host is where it sends: a webhook URL's scheme and host (its path
	// often holds a credential), or a Kafka destination's brokers and
	// topic.
	Host string
	// Rules counts the rules that send to it.
	Rules int
	// Status is its delivery's status; nil when the data plane cannot say.
	Status *dataplane.DeliveryStatus
	// Operator marks the built-in operator-kafka, which has no outbox:
	// Errors is what Kafka refused of its rules' writes.
	Operator bool
	Errors   int64
}

// ruleRow is a rule with a destination, by the destination's name; a rule
// to operator-kafka has its Kafka topic and what Kafka refused.
type ruleRow struct {
	tenants.ExportRule
	DestinationName string
	Errors          int64
}

// webhooksData is the webhooks page: destinations, the rules sending to
// them, and what the last form did.
type webhooksData struct {
	Rows  []webhookRow
	Rules []ruleRow
	// Created is a destination just made, with its secret shown once.
	Created *createdDestination
	// Test is how a send test went.
	Test *sendTest
	// Dead lists a destination's dead letters, when asked for.
	Dead *deadLetters
	// OperatorKafka: the hub exports to the operator's Kafka, listed first.
	OperatorKafka bool
}

type createdDestination struct {
	Name, Type, Secret string
}

type sendTest struct {
	Name      string
	Delivered bool
	Status    int
	LatencyMS int64
	Kind      string
	Message   string
}

type deadLetters struct {
	Name, ID string
	Letters  []deadLetterRow
	More     bool
}

type deadLetterRow struct {
	dataplane.DeadLetter
	Preview string
}

// deadLettersShown is how many dead letters the page lists.
const deadLettersShown = 50

// deliveries returns the data plane's deliveries, nil if it has none.
func (c *Console) deliveries() dataplane.Deliveries {
	dl, _ := c.cfg.DataPlane.(dataplane.Deliveries)
	return dl
}

// deliveryStatus is a destination's delivery status; nil when the data
// plane cannot say (it has no deliveries, or no node answered).
func (c *Console) deliveryStatus(ctx context.Context, tenant, id string) (*dataplane.DeliveryStatus, error) {
	dl := c.deliveries()
	if dl == nil {
		return nil, nil
	}
	st, err := dl.DeliveryStatus(ctx, tenant, id)
	switch {
	case errors.Is(err, tenants.ErrUnavailable):
		return nil, nil
	case err != nil:
		return nil, err
	}
	return &st, nil
}

// webhooksPage shows each destination with how its delivery goes: what
// waits, how late, what gave up, what was delivered, the last error; and
// with ?dead=<id>, that destination's dead letters.
func (c *Console) webhooksPage(w http.ResponseWriter, r *http.Request) {
	c.renderWebhooks(w, r, http.StatusOK, page{}, webhooksData{})
}

func (c *Console) renderWebhooks(w http.ResponseWriter, r *http.Request, status int, p page, data webhooksData) {
	ctx, slug := r.Context(), tenantOf(r).Slug
	ds, err := c.store.Destinations(ctx, slug)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	rules, err := c.store.Rules(ctx, slug)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	dl := c.deliveries()
	names := map[string]string{}
	data.Rows = make([]webhookRow, len(ds))
	for i, d := range ds {
		names[d.ID] = d.Name
		data.Rows[i] = webhookRow{Destination: d, Host: where(d)}
		for _, rule := range rules {
			if rule.Destination == d.ID {
				data.Rows[i].Rules++
			}
		}
		if data.Rows[i].Status, err = c.deliveryStatus(ctx, slug, d.ID); err != nil {
			c.internal(w, r, err)
			return
		}
	}
	// The operator's Kafka comes first, as in the API's list: rules with
	// a Kafka topic (and no destination of the tenant's) are its.
	var exportErrs map[string]int64
	if c.cfg.OperatorKafka {
		if c.cfg.DataPlane != nil {
			exportErrs = c.cfg.DataPlane.ExportErrors(slug)
		}
		op := webhookRow{Destination: tenants.OperatorKafkaDestination(), Host: tenants.ExportTopic(slug, "<topic>"), Operator: true}
		for _, rule := range rules {
			if rule.Destination == "" {
				op.Rules++
				op.Errors += exportErrs[rule.ID]
			}
		}
		data.Rows = append([]webhookRow{op}, data.Rows...)
		data.OperatorKafka = true
	}
	for _, rule := range rules {
		switch {
		case rule.Destination != "":
			data.Rules = append(data.Rules, ruleRow{ExportRule: rule, DestinationName: names[rule.Destination]})
		case c.cfg.OperatorKafka:
			data.Rules = append(data.Rules, ruleRow{ExportRule: rule, DestinationName: tenants.OperatorKafka, Errors: exportErrs[rule.ID]})
		}
	}
	if id := r.URL.Query().Get("dead"); id != "" && data.Dead == nil && dl != nil {
		if name, ok := names[id]; ok {
			letters, more, err := dl.DeadLetters(ctx, slug, id, 0, deadLettersShown+1)
			switch {
			case errors.Is(err, tenants.ErrUnavailable):
			case err != nil:
				c.internal(w, r, err)
				return
			default:
				data.Dead = &deadLetters{Name: name, ID: id, More: more || len(letters) > deadLettersShown}
				for _, l := range letters[:min(len(letters), deadLettersShown)] {
					data.Dead.Letters = append(data.Dead.Letters, deadLetterRow{DeadLetter: l, Preview: preview(l.Payload)})
				}
			}
		}
	}
	p.Title, p.Nav, p.Data = "Webhooks", "webhooks", data
	c.render(w, r, status, "webhooks.html", p)
}

// where says where a destination sends, without a webhook URL's path.
func where(d tenants.Destination) string {
	if d.Kafka != nil {
		return "kafka://" + strings.Join(d.Kafka.Brokers, ",") + " → " + d.Kafka.Topic
	}
	return dataout.OriginOf(d.URL)
}

// preview is a payload as the page shows it: text if it is, else base64;
// at most 200 characters.
func preview(p []byte) string {
	s := string(p)
	if !utf8.Valid(p) {
		s = "base64:" + base64.StdEncoding.EncodeToString(p)
	}
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200]) + "…"
	}
	return s
}

// destinationForm reads the add-a-destination form. The password and the
// header values are not echoed back on an error; everything else is.
func destinationForm(r *http.Request) (tenants.DestinationInput, map[string]string) {
	v := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	in := tenants.DestinationInput{Name: v("name"), Type: v("type"), URL: v("url"), OutboxPolicy: tenants.OutboxPolicy(v("outbox_policy")),
		MaxOutbox: maxOutboxField(v("max_outbox"))}
	form := map[string]string{"name": in.Name, "type": in.Type, "url": in.URL,
		"outbox_policy": string(in.OutboxPolicy), "max_outbox": v("max_outbox")}
	if in.Type == tenants.DestinationKafka {
		in.URL, in.Kafka = "", kafkaForm(r, form)
	} else {
		kafkaForm(r, form) // shown again as sent
	}
	return in, form
}

// kafkaForm reads a form's Kafka fields: into form, to show them again
// (less the password), and as a Kafka destination's settings.
func kafkaForm(r *http.Request, form map[string]string) *tenants.Kafka {
	for _, k := range []string{"brokers", "topic", "tls", "ca", "server_name", "mechanism"} {
		form[k] = strings.TrimSpace(r.PostFormValue(k))
	}
	form["username"] = r.PostFormValue("username") // as the API takes it
	k := &tenants.Kafka{Topic: form["topic"], TLS: form["tls"] != "", CA: form["ca"], ServerName: form["server_name"]}
	k.Brokers = strings.FieldsFunc(form["brokers"], func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\r' })
	if form["mechanism"] != "" {
		k.SASL = &tenants.KafkaSASL{Mechanism: form["mechanism"], Username: form["username"], Password: r.PostFormValue("password")}
	}
	return k
}

// webhookCreate adds a destination (admins): a webhook, whose signing
// secret the answer shows once, or the tenant's Kafka. Mistakes come back
// on the same page, by field.
func (c *Console) webhookCreate(w http.ResponseWriter, r *http.Request) {
	slug := tenantOf(r).Slug
	in, form := destinationForm(r)
	again := func(status int, errs map[string]string) {
		c.renderWebhooks(w, r, status, page{Form: form, Errors: errs}, webhooksData{})
	}
	if in.Type != tenants.DestinationKafka {
		h, err := headersField(r.PostFormValue("headers"))
		if err != nil {
			again(http.StatusBadRequest, formErrors(err))
			return
		}
		in.Headers = h
	}
	if err := in.Validate(); err != nil {
		again(http.StatusBadRequest, formErrors(err))
		return
	}
	guard := c.out.sender.Guard()
	id := tenants.NewDestinationID()
	var sealed tenants.Sealed
	var secret string
	if in.Type == tenants.DestinationKafka {
		if err := guard.CheckKafka(r.Context(), in.Kafka.Brokers, in.Kafka.TLS); err != nil {
			again(http.StatusBadRequest, map[string]string{"kafka.brokers": err.Error()})
			return
		}
		if in.Kafka.SASL != nil {
			sealed.Password = c.out.sealer.SealPassword(slug, id, in.Kafka.SASL.Password)
		}
	} else {
		if err := guard.CheckURL(in.URL); err != nil {
			again(http.StatusBadRequest, map[string]string{"url": err.Error()})
			return
		}
		secret = dataout.NewSecret()
		sealed.Secret, sealed.Headers = c.out.sealer.SealSecret(slug, id, secret), c.out.sealer.SealHeaders(slug, id, in.Headers)
	}
	d, err := c.store.CreateDestination(r.Context(), slug, id, in, sealed)
	if err != nil {
		if !errors.Is(err, tenants.ErrInvalid) && !errors.Is(err, tenants.ErrQuotaExceeded) && !errors.Is(err, tenants.ErrConflict) {
			c.fail(w, r, err)
			return
		}
		errs := formErrors(err)
		if errors.Is(err, tenants.ErrConflict) {
			errs = map[string]string{"name": "a destination of that name exists"}
		}
		again(http.StatusBadRequest, errs)
		return
	}
	// The secret is shown on this answer to the POST and never again.
	c.renderWebhooks(w, r, http.StatusCreated, page{Flash: "Destination " + d.Name + " added."},
		webhooksData{Created: &createdDestination{Name: d.Name, Type: d.Type, Secret: secret}})
}

// webhookDelete removes a destination (admins); one a rule uses is not,
// and the page says why.
func (c *Console) webhookDelete(w http.ResponseWriter, r *http.Request) {
	slug := tenantOf(r).Slug
	err := c.store.DeleteDestination(r.Context(), slug, chi.URLParam(r, "id"))
	switch {
	case errors.Is(err, tenants.ErrConflict):
		c.renderWebhooks(w, r, http.StatusConflict, page{Errors: map[string]string{"_": "Rules send to this destination: delete them first."}}, webhooksData{})
	case err != nil:
		c.fail(w, r, err)
	default:
		redirect(w, r, "/tenants/"+slug+"/webhooks", "deleted")
	}
}

// maxOutboxField reads a max_outbox field: empty is 0 (the tenant's
// quota); what is not a number is -1, which validation refuses.
func maxOutboxField(v string) int64 {
	if v == "" {
		return 0
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// webhookPolicy sets what a destination's full outbox does (admins):
// drop_oldest, refuse, or "" for the tenant's outbox_policy; and its own
// max_outbox (empty or 0: the tenant's quota).
func (c *Console) webhookPolicy(w http.ResponseWriter, r *http.Request) {
	slug := tenantOf(r).Slug
	var up tenants.DestinationUpdate // only what the form has: "" and empty are values
	if r.ParseForm(); r.PostForm.Has("outbox_policy") {
		p := tenants.OutboxPolicy(strings.TrimSpace(r.PostFormValue("outbox_policy")))
		up.OutboxPolicy = &p
	}
	if r.PostForm.Has("max_outbox") {
		n := maxOutboxField(strings.TrimSpace(r.PostFormValue("max_outbox")))
		up.MaxOutbox = &n
	}
	_, err := c.store.UpdateDestination(r.Context(), slug, chi.URLParam(r, "id"), up, nil)
	switch {
	case errors.Is(err, tenants.ErrInvalid):
		var msgs []string
		for _, m := range formErrors(err) {
			msgs = append(msgs, m)
		}
		c.renderWebhooks(w, r, http.StatusBadRequest, page{Errors: map[string]string{"_": strings.Join(msgs, "; ")}}, webhooksData{})
	case err != nil:
		c.fail(w, r, err)
	default:
		redirect(w, r, "/tenants/"+slug+"/webhooks", "saved")
	}
}

// webhookTest sends one sample message to a destination now (admins) and
// shows how it went: a signed request to a webhook, a record to Kafka.
func (c *Console) webhookTest(w http.ResponseWriter, r *http.Request) {
	ctx, slug := r.Context(), tenantOf(r).Slug
	d, err := c.store.Destination(ctx, slug, chi.URLParam(r, "id"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if !c.out.takeTest(slug, c.cfg.Now()) {
		w.Header().Set("Retry-After", "60")
		c.renderWebhooks(w, r, http.StatusTooManyRequests, page{Errors: map[string]string{"_": "At most 10 send tests a minute: try again in a minute."}}, webhooksData{})
		return
	}
	target, err := c.out.sealer.Webhook(slug, d)
	if errors.Is(err, dataout.ErrKeyChanged) {
		c.renderWebhooks(w, r, http.StatusConflict, page{Errors: map[string]string{"_": "The destination's secret or password was sealed under an earlier operator token: rotate the secret, or give the headers or the password again, on its page."}}, webhooksData{})
		return
	}
	if err != nil {
		c.internal(w, r, err)
		return
	}
	if err := c.out.sealer.Refresh(ctx, c.store, slug, d); err != nil {
		c.cfg.Log.Warn("seal a destination's secrets under the current key", "tenant", slug, "destination", d.ID, "err", err)
	}
	b := make([]byte, 8)
	rand.Read(b)
	batch := dataout.Batch{Tenant: slug, Destination: d.ID, Messages: []dataout.Message{{ID: "test_" + hex.EncodeToString(b), Topic: "$roost/test",
		Payload: []byte(`{"test":true,"text":"a test request from Roost"}`), QoS: 1, Time: c.cfg.Now()}}}
	a := c.out.sender.Send(ctx, target, batch)
	res := &sendTest{Name: d.Name, Delivered: a.OK(), Status: a.Status, LatencyMS: a.Latency.Milliseconds()}
	if a.Err != nil {
		res.Kind, res.Message = string(a.Kind), a.Err.Error()
	}
	c.renderWebhooks(w, r, http.StatusOK, page{}, webhooksData{Test: res})
}

// webhookRuleCreate adds a rule sending to a destination (admins). Its
// condition and projection are compiled first: a mistake comes back on
// the same page with its line and column.
func (c *Console) webhookRuleCreate(w http.ResponseWriter, r *http.Request) {
	slug := tenantOf(r).Slug
	in := tenants.ExportRuleInput{Filter: strings.TrimSpace(r.PostFormValue("filter")), Destination: r.PostFormValue("destination"),
		Condition: strings.TrimSpace(r.PostFormValue("condition")), Projection: strings.TrimSpace(r.PostFormValue("projection"))}
	form := map[string]string{"filter": in.Filter, "rule_destination": in.Destination, "condition": in.Condition, "projection": in.Projection,
		"rule_topic": strings.TrimSpace(r.PostFormValue("rule_topic"))}
	if in.ToOperatorKafka() {
		// Only the operator's Kafka takes a topic; the field is ignored for
		// the tenant's destinations.
		in.Topic = form["rule_topic"]
	}
	again := func(status int, errs map[string]string) {
		c.renderWebhooks(w, r, status, page{Form: form, Errors: errs}, webhooksData{})
	}
	if err := c.compileRule(r.Context(), slug, tenants.ExportRule{Filter: in.Filter, Condition: in.Condition, Projection: in.Projection}); err != nil {
		var re *dataout.RuleError
		if errors.As(err, &re) {
			again(http.StatusBadRequest, map[string]string{re.Field: re.Err.Error()})
			return
		}
		c.fail(w, r, err)
		return
	}
	if in.Destination == "" {
		again(http.StatusBadRequest, map[string]string{"rule_destination": "choose a destination"})
		return
	}
	if _, err := c.store.CreateExportRule(r.Context(), slug, in); err != nil {
		if !errors.Is(err, tenants.ErrInvalid) && !errors.Is(err, tenants.ErrQuotaExceeded) && !errors.Is(err, tenants.ErrNotFound) {
			c.fail(w, r, err)
			return
		}
		errs := formErrors(err)
		if errors.Is(err, tenants.ErrNotFound) {
			errs = map[string]string{"rule_destination": "no such destination"}
		}
		if m, ok := errs["destination"]; ok {
			errs["rule_destination"] = m
		}
		if m, ok := errs["topic"]; ok {
			errs["rule_topic"] = m
		}
		again(http.StatusBadRequest, errs)
		return
	}
	redirect(w, r, "/tenants/"+slug+"/webhooks", "rule")
}

// webhookRuleDelete removes a rule (admins).
func (c *Console) webhookRuleDelete(w http.ResponseWriter, r *http.Request) {
	slug := tenantOf(r).Slug
	if err := c.store.DeleteExportRule(r.Context(), slug, chi.URLParam(r, "id")); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/tenants/"+slug+"/webhooks", "rule-deleted")
}

// webhookDead replays or purges a destination's dead letters (admins).
func (c *Console) webhookDead(replay bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, slug := r.Context(), tenantOf(r).Slug
		d, err := c.store.Destination(ctx, slug, chi.URLParam(r, "id"))
		if err != nil {
			c.fail(w, r, err)
			return
		}
		dl := c.deliveries()
		if dl == nil {
			c.errorPage(w, r, http.StatusServiceUnavailable, "Dead letters are kept by the data plane, which this console has none of.")
			return
		}
		done := "replayed"
		if replay {
			_, err = dl.ReplayDeadLetters(ctx, slug, d.ID)
		} else {
			_, err = dl.PurgeDeadLetters(ctx, slug, d.ID)
			done = "purged"
		}
		if err != nil {
			c.fail(w, r, err)
			return
		}
		redirect(w, r, "/tenants/"+slug+"/webhooks", done)
	}
}
