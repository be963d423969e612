package main

import (
	"strings"
	"testing"
)

// TestWebhookSettings: the webhook settings have ROOST_* twins and
// defaults, a bad value stops start-up naming it, and development (plain
// http to public hosts) is the embedded database not published over
// https.
func TestWebhookSettings(t *testing.T) {
	c, err := parseConfig("serve", nil, env(map[string]string{"ROOST_DATA_DIR": t.TempDir()}))
	if err != nil {
		t.Fatal(err)
	}
	if c.WebhookAllowHosts != "" || c.WebhookTimeout.String() != "10s" || !c.development() || c.WebhookBatch != 100 || c.WebhookRetryHorizon.String() != "24h0m0s" {
		t.Errorf("defaults: allow %q timeout %v development %v batch %d horizon %v", c.WebhookAllowHosts, c.WebhookTimeout, c.development(), c.WebhookBatch, c.WebhookRetryHorizon)
	}
	c, err = parseConfig("serve", nil, env(map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_WEBHOOK_ALLOW_HOSTS": "127.0.0.1, hooks.internal", "ROOST_PUBLIC_URL": "https://hub.example.com"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.development() {
		t.Error("published over https: development")
	}
	g, err := c.webhookSender(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Guard().CheckURL("http://127.0.0.1:9000/hook"); err != nil {
		t.Errorf("an allowed host over http: %v", err)
	}
	if err := g.Guard().CheckURL("http://hooks.example.com/"); err == nil {
		t.Error("plain http to a public host outside development was accepted")
	}
	for name, v := range map[string]string{"ROOST_WEBHOOK_ALLOW_HOSTS": "10.0.0.0/8", "ROOST_WEBHOOK_TIMEOUT": "1ms",
		"ROOST_WEBHOOK_BATCH": "0", "ROOST_WEBHOOK_RETRY_HORIZON": "1000h"} {
		_, err := parseConfig("serve", nil, env(map[string]string{"ROOST_DATA_DIR": t.TempDir(), name: v}))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%s: got %v, want an error naming it", name, v, err)
		}
	}
}
