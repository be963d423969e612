package web_test

import (
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/roosthub/roost/web"
)

// TestBrowserWebhooksOperatorKafka is the webhooks page in a real browser
// with the operator's Kafka configured: the built-in operator-kafka is
// listed, read-only; an admin picks it in the rule form, gives a filter on
// the tenant's events and a Kafka topic, and sees the rule listed with
// roost.acme.<topic>.
func TestBrowserWebhooksOperatorKafka(t *testing.T) {
	s := newStackWith(t, func(c *web.Config) { c.OperatorKafka = true })
	ctx := chrome(t)
	b := steps{t, ctx, s}
	run, text := b.run, b.text
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	run("sign up",
		chromedp.Navigate(s.url+"/signup"),
		chromedp.WaitVisible(css(`#password2`)),
		chromedp.SendKeys(css(`#email`), "opk@example.com"),
		chromedp.SendKeys(css(`#password`), "correct horse battery"),
		chromedp.SendKeys(css(`#password2`), "correct horse battery"),
		chromedp.Submit(css(`#password2`)),
		chromedp.WaitVisible(css(`#slug`)),
		chromedp.SendKeys(css(`#slug`), "acme"),
		chromedp.Submit(css(`#slug`)),
		chromedp.WaitNotPresent(css(`#slug`)),
		chromedp.WaitVisible(css(`#name`)),
	)
	run("open the webhooks page",
		chromedp.Navigate(s.url+"/tenants/acme/webhooks"),
		chromedp.WaitVisible(css(`#rule_topic`)),
	)
	if got := text(`table tbody tr td`); !strings.Contains(got, "operator-kafka") || !strings.Contains(got, "roost.acme.<topic>") {
		t.Errorf("the first destination: %q, want operator-kafka and roost.acme.<topic>", got)
	}
	if got := text(`table tbody tr td.actions`); !strings.Contains(got, "read-only") {
		t.Errorf("operator-kafka's actions: %q, want read-only", got)
	}
	screenshot(t, ctx, "24-operator-kafka")
	run("add a rule on events to operator-kafka",
		chromedp.SetValue(css(`#rule_destination`), "operator-kafka"),
		chromedp.SendKeys(css(`#filter`), "$events/presence/#"),
		chromedp.SendKeys(css(`#rule_topic`), "presence"),
		chromedp.Submit(css(`#filter`)),
		chromedp.WaitVisible(css(`.flash`)),
		chromedp.WaitVisible(css(`button[aria-label="Delete the rule $events/presence/# to operator-kafka"]`)),
	)
	rules, err := s.store.ExportRules(t.Context(), "acme")
	if err != nil || len(rules) != 1 || rules[0].Filter != "$events/presence/#" || rules[0].KafkaTopic != "roost.acme.presence" {
		t.Fatalf("export rules after the form: %+v, %v", rules, err)
	}
	if got := text(`body`); !strings.Contains(got, "operator-kafka → roost.acme.presence") {
		t.Errorf("the page after the rule does not list it with its Kafka topic:\n%s", got)
	}
	screenshot(t, ctx, "25-operator-kafka-rule")
}
