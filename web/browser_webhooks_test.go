package web_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/roosthub/roost/dataout"
)

// TestBrowserWebhooks is the webhooks page in a real browser: an admin
// adds a webhook and reads its secret from the page, presses "Send test"
// and sees it delivered to a receiver that checks the signature with that
// secret, submits a rule whose condition does not compile and sees where
// on the same page, fixes it, and sees the rule listed.
func TestBrowserWebhooks(t *testing.T) {
	s := newStack(t)
	ctx := chrome(t)
	var secret atomic.Value
	secret.Store("")
	var signed atomic.Int32
	var team atomic.Value // the last request's path and X-Team header
	team.Store("")
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if dataout.Verify(secret.Load().(string), r.Header.Get("Roost-Signature"), body, time.Now(), 5*time.Minute) != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		signed.Add(1)
		team.Store(r.URL.Path + " " + r.Header.Get("X-Team"))
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rc.Close)
	b := steps{t, ctx, s}
	run, text := b.run, b.text
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	run("sign up",
		chromedp.Navigate(s.url+"/signup"),
		chromedp.WaitVisible(css(`#password2`)),
		chromedp.SendKeys(css(`#email`), "hooks@example.com"),
		chromedp.SendKeys(css(`#password`), "correct horse battery"),
		chromedp.SendKeys(css(`#password2`), "correct horse battery"),
		chromedp.Submit(css(`#password2`)),
		chromedp.WaitVisible(css(`#slug`)),
		chromedp.SendKeys(css(`#slug`), "acme"),
		chromedp.Submit(css(`#slug`)),
		chromedp.WaitNotPresent(css(`#slug`)), // off the tenants page, whose form has a #name too
		chromedp.WaitVisible(css(`#name`)),
	)
	run("add a webhook",
		chromedp.Navigate(s.url+"/tenants/acme/webhooks"),
		chromedp.WaitVisible(css(`#add-destination`)),
		chromedp.SendKeys(css(`#add-destination #name`), "ingest"),
		chromedp.SendKeys(css(`#url`), rc.URL+"/hook"),
		chromedp.Submit(css(`#url`)),
		chromedp.WaitVisible(css(`#created-secret`)),
	)
	sec := text(`#created-secret`)
	screenshot(t, ctx, "20-webhook-created")
	if !strings.HasPrefix(sec, "whsec_") {
		t.Fatalf("the secret on the page: %q", sec)
	}
	secret.Store(sec)
	run("send a test",
		chromedp.Click(css(`button[aria-label="Send a test message to ingest"]`)),
		chromedp.WaitVisible(css(`#test-result`)),
	)
	if got := text(`#test-result`); !strings.HasPrefix(got, "Delivered to ingest") || signed.Load() != 1 {
		t.Errorf("send test: %q, %d signed requests; want delivered, 1", got, signed.Load())
	}
	screenshot(t, ctx, "21-webhook-send-test")
	run("a rule whose condition does not compile",
		chromedp.SendKeys(css(`#filter`), "sensors/#"),
		chromedp.SendKeys(css(`#condition`), "payload.temp > > 30"),
		chromedp.Submit(css(`#filter`)),
		chromedp.WaitVisible(css(`#condition-error`)),
	)
	if got := text(`#condition-error`); !strings.HasPrefix(got, "line 1, column ") {
		t.Errorf("the condition's error: %q, want its line and column", got)
	}
	screenshot(t, ctx, "22-webhook-rule-error")
	run("fix it",
		chromedp.SetValue(css(`#condition`), "payload.temp > 30"),
		chromedp.Submit(css(`#filter`)),
		chromedp.WaitVisible(css(`.flash`)),
	)
	rules, err := s.store.Rules(t.Context(), "acme")
	if err != nil || len(rules) != 1 || rules[0].Condition != "payload.temp > 30" || rules[0].Filter != "sensors/#" {
		t.Fatalf("rules after the form: %+v, %v", rules, err)
	}
	screenshot(t, ctx, "23-webhook-rule")
	run("change the webhook on its own page",
		chromedp.Click(css(`a[href$="/webhooks/`+rules[0].Destination+`"]`)),
		chromedp.WaitVisible(css(`#edit-destination`)),
		chromedp.SetValue(css(`#edit-destination #url`), rc.URL+"/v2"),
		chromedp.SendKeys(css(`#headers`), "X-Team: plant"),
		chromedp.Submit(css(`#edit-destination #url`)),
		chromedp.WaitVisible(css(`.flash`)),
		chromedp.WaitVisible(css(`#header-names`)),
	)
	if got := text(`.flash`); !strings.Contains(got, "Saved") {
		t.Errorf("after saving: %q", got)
	}
	screenshot(t, ctx, "24-webhook-edited")
	run("send a test again",
		chromedp.Navigate(s.url+"/tenants/acme/webhooks"),
		chromedp.Click(css(`button[aria-label="Send a test message to ingest"]`)),
		chromedp.WaitVisible(css(`#test-result`)),
	)
	if got := team.Load().(string); got != "/v2 plant" {
		t.Errorf("the receiver had %q, want the new path and header", got)
	}
}
