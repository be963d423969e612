package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/mail"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// hub is a `roost serve` running in this process.
type hub struct {
	url    string
	mqtt   string // host:port of the MQTT listener
	stdout *testenv.Buffer
	stderr *testenv.Buffer
	stop   func() error
}

var apiLine = regexp.MustCompile(`API on (http://\S+), MQTT on mqtt://(\S+)`)

// startServe runs `roost serve` with args and env until the test ends.
func startServe(t *testing.T, vars map[string]string, args ...string) *hub {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h := &hub{stdout: &testenv.Buffer{}, stderr: &testenv.Buffer{}}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"serve", "--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"}, args...), env(vars), h.stdout, h.stderr)
	}()
	var once sync.Once
	var stopErr error
	h.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(15 * time.Second):
				stopErr = errors.New("serve did not stop within 15s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { h.stop() })
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if m := apiLine.FindStringSubmatch(h.stdout.String()); m != nil {
			h.url, h.mqtt = m[1], m[2]
			return h
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\nstdout: %s\nstderr: %s", err, h.stdout, h.stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("serve did not start\nstdout: %s\nstderr: %s", h.stdout, h.stderr)
	return nil
}

func post(t *testing.T, url, token string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", url, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return doJSON(t, req)
}

func get(t *testing.T, url, token string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return doJSON(t, req)
}

func doJSON(t *testing.T, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &m)
	return resp.StatusCode, m
}

func TestVersionAndUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"version"}, env(nil), &out, &errOut); err != nil || !strings.HasPrefix(out.String(), "roost ") {
		t.Errorf("version: got %q, %v", out.String(), err)
	}
	if err := run(context.Background(), nil, env(nil), &out, &errOut); err == nil {
		t.Error("no command: want an error")
	}
	if err := run(context.Background(), []string{"fly"}, env(nil), &out, &errOut); err == nil || !strings.Contains(err.Error(), `"fly"`) {
		t.Errorf("unknown command: got %v", err)
	}
	err := run(context.Background(), []string{"serve", "-h"}, env(nil), &out, &errOut)
	var help *helpError
	if !errors.As(err, &help) || !strings.Contains(help.text, "ROOST_DATABASE_URL") {
		t.Errorf("serve -h: got %v, want the flags with their variables", err)
	}
}

// TestBadConfig: each bad setting stops start-up with one line naming it.
func TestBadConfig(t *testing.T) {
	tests := []struct {
		vars map[string]string
		args []string
		want string
	}{
		{map[string]string{"ROOST_HTTP_ADDR": "8080"}, nil, "ROOST_HTTP_ADDR"},
		{map[string]string{"ROOST_HTTP_ADDR": "localhost:http2x"}, nil, "ROOST_HTTP_ADDR"},
		{map[string]string{"ROOST_DATABASE_URL": "mysql://x"}, nil, "ROOST_DATABASE_URL"},
		{map[string]string{"ROOST_ADMIN_TOKEN": "short"}, nil, "ROOST_ADMIN_TOKEN"},
		{map[string]string{"ROOST_PUBLIC_URL": "ftp://x"}, nil, "ROOST_PUBLIC_URL"},
		{map[string]string{"ROOST_LOG_FORMAT": "xml"}, nil, "ROOST_LOG_FORMAT"},
		{map[string]string{"ROOST_SMTP_URL": "http://mail.example.com"}, nil, "ROOST_SMTP_URL"},
		{map[string]string{"ROOST_SMTP_URL": "smtp://"}, nil, "ROOST_SMTP_URL"},
		{map[string]string{"ROOST_MAIL_FROM": "not an address"}, nil, "ROOST_MAIL_FROM"},
		{map[string]string{"ROOST_DEBUG_ADDR": "localhost"}, nil, "ROOST_DEBUG_ADDR"},
		{map[string]string{"ROOST_PROXY_PROTOCOL": "mqtt,http"}, nil, "ROOST_PROXY_PROTOCOL"},
		{map[string]string{"ROOST_MQTT_TLS_ADDR": "127.0.0.1:0"}, nil, "ROOST_TLS_CERT"},
		{map[string]string{"ROOST_TLS_CERT": "/x.pem"}, nil, "ROOST_TLS_CERT"},
		{map[string]string{"ROOST_DEV_TLS": "maybe"}, nil, "ROOST_DEV_TLS"},
		{map[string]string{"ROOST_WS_ADDR": "nowhere"}, nil, "ROOST_WS_ADDR"},
		{map[string]string{"ROOST_MQTT_DOMAIN": "Not A Domain"}, nil, "ROOST_MQTT_DOMAIN"},
		{map[string]string{"ROOST_TOKEN_TTL": "forever"}, nil, "ROOST_TOKEN_TTL"},
		{map[string]string{"ROOST_TOKEN_TTL": "1s"}, nil, "ROOST_TOKEN_TTL"},
		{map[string]string{"ROOST_MAX_HANDSHAKES": "lots"}, nil, "ROOST_MAX_HANDSHAKES"},
		{map[string]string{"ROOST_MAX_HANDSHAKES": "0"}, nil, "ROOST_MAX_HANDSHAKES"},
		{map[string]string{"ROOST_MAX_HANDSHAKES_PER_ADDRESS": "-1"}, nil, "ROOST_MAX_HANDSHAKES_PER_ADDRESS"},
		{nil, []string{"--max-handshakes-per-endpoint", "0"}, "ROOST_MAX_HANDSHAKES_PER_ENDPOINT"},
		{map[string]string{"ROOST_HANDSHAKE_RATE_PER_ADDRESS": "-1"}, nil, "ROOST_HANDSHAKE_RATE_PER_ADDRESS"},
		{map[string]string{"ROOST_HANDSHAKE_BURST_PER_ADDRESS": "0"}, nil, "ROOST_HANDSHAKE_BURST_PER_ADDRESS"},
		{nil, []string{"--handshake-rate-per-endpoint", "2000000"}, "ROOST_HANDSHAKE_RATE_PER_ENDPOINT"},
		{map[string]string{"ROOST_HANDSHAKE_BURST_PER_ENDPOINT": "many"}, nil, "ROOST_HANDSHAKE_BURST_PER_ENDPOINT"},
		{map[string]string{"ROOST_SESSION_STORE": "floppy"}, nil, "ROOST_SESSION_STORE"},
		{map[string]string{"ROOST_STORE_SYNC": "sometimes"}, nil, "ROOST_STORE_SYNC"},
		{map[string]string{"ROOST_STORE_SYNC": "interval", "ROOST_STORE_SYNC_INTERVAL": "0s"}, nil, "ROOST_STORE_SYNC_INTERVAL"},
		{map[string]string{"ROOST_STORE_SYNC": "interval", "ROOST_STORE_SYNC_INTERVAL": "2m"}, nil, "ROOST_STORE_SYNC_INTERVAL"},
		{map[string]string{"ROOST_STORE_SYNC_INTERVAL": "soon"}, nil, "ROOST_STORE_SYNC_INTERVAL"},
		{map[string]string{"ROOST_STORE_SYNC": "interval", "ROOST_SESSION_STORE": "redis", "ROOST_REDIS_URL": "redis://127.0.0.1:1"}, nil, "ROOST_STORE_SYNC"},
		{map[string]string{"ROOST_FLEET_SPREAD": "true"}, nil, "ROOST_FLEET_SPREAD"},
		{map[string]string{"ROOST_FLEET_FABRIC": "carrier-pigeon"}, nil, "ROOST_FLEET_FABRIC"},
		{map[string]string{"ROOST_FLEET_WIDEN_AT": "-1"}, nil, "ROOST_FLEET_WIDEN_AT"},
		{map[string]string{"ROOST_FLEET_SPREAD": "true", "ROOST_SESSION_STORE": "redis", "ROOST_REDIS_URL": "redis://127.0.0.1:1", "ROOST_FLEET_FABRIC": "kafka"}, nil, "ROOST_KAFKA_BROKERS"},
		{map[string]string{"ROOST_KAFKA_BROKERS": "kafka"}, nil, "ROOST_KAFKA_BROKERS"},
		{map[string]string{"ROOST_SESSION_STORE": "redis"}, nil, "ROOST_REDIS_URL"},
		{map[string]string{"ROOST_SESSION_STORE": "hbase", "ROOST_HBASE_URL": "hbase:8080"}, nil, "ROOST_HBASE_URL"},
		{map[string]string{"ROOST_SESSION_STORE": "redis", "ROOST_REDIS_URL": "redis://127.0.0.1:1"}, nil, "ROOST_REDIS_URL"},
		{map[string]string{"ROOST_STRIPE_KEY": "pk_test_123", "ROOST_STRIPE_WEBHOOK_SECRET": "whsec_x"}, nil, "ROOST_STRIPE_KEY"},
		{map[string]string{"ROOST_STRIPE_KEY": "sk_test_123"}, nil, "ROOST_STRIPE_WEBHOOK_SECRET"},
		{map[string]string{"ROOST_STRIPE_KEY": "sk_test_123", "ROOST_STRIPE_WEBHOOK_SECRET": "secret"}, nil, "ROOST_STRIPE_WEBHOOK_SECRET"},
		{map[string]string{"ROOST_STRIPE_WEBHOOK_SECRET": "whsec_x"}, nil, "ROOST_STRIPE_KEY"},
		{map[string]string{"ROOST_STRIPE_KEY": "sk_test_123", "ROOST_STRIPE_WEBHOOK_SECRET": "whsec_x", "ROOST_STRIPE_API_URL": "stripe-mock:12111"}, nil, "ROOST_STRIPE_API_URL"},
		{map[string]string{"ROOST_BILLING_GRACE": "1s"}, nil, "ROOST_BILLING_GRACE"},
		{map[string]string{"ROOST_PLANS_FILE": "/no/such/plans.yaml"}, nil, "ROOST_PLANS_FILE"},
		{map[string]string{"ROOST_PLANS_FILE": "testdata/bad-plans.yaml"}, nil, "ROOST_PLANS_FILE"},
		{nil, []string{"--http-addr", "nope"}, "ROOST_HTTP_ADDR"},
		{nil, []string{"--no-such-flag"}, "no-such-flag"},
		{nil, []string{"extra"}, "extra"},
	}
	for _, tc := range tests {
		vars := map[string]string{"ROOST_DATA_DIR": t.TempDir()}
		for k, v := range tc.vars {
			vars[k] = v
		}
		var out, errOut bytes.Buffer
		err := run(context.Background(), append([]string{"serve"}, tc.args...), env(vars), &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("serve with %v %v: got %v, want one line naming %s", tc.vars, tc.args, err, tc.want)
		}
	}
	// A flag wins over its variable.
	c, err := parseConfig("serve", []string{"--http-addr", "127.0.0.1:9"}, env(map[string]string{"ROOST_HTTP_ADDR": "nope"}))
	if err != nil || c.HTTPAddr != "127.0.0.1:9" {
		t.Errorf("flag over env: got %+v, %v", c, err)
	}
}

// TestServeKeepsDataAcrossRestarts: an account, a tenant, a device and the
// session-signing key survive a restart; the operator token is generated and
// printed once, then read back.
func TestServeKeepsDataAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	vars := map[string]string{"ROOST_DATA_DIR": dir}
	h := startServe(t, vars)
	if !strings.Contains(h.stdout.String(), "Generated the operator token") {
		t.Errorf("first start did not print the operator token:\n%s", h.stdout)
	}
	adminToken, err := os.ReadFile(filepath.Join(dir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "admin-token")); fi.Mode().Perm() != 0o600 {
		t.Errorf("admin-token mode %v, want 0600", fi.Mode().Perm())
	}
	status, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "a@example.com", "password": "correct horse battery"})
	if status != 201 {
		t.Fatalf("signup: %d %v", status, m)
	}
	token := m["token"].(string)
	if status, _ := post(t, h.url+"/v1/tenants", token, map[string]string{"slug": "acme"}); status != 201 {
		t.Fatalf("create tenant: %d", status)
	}
	if status, _ := post(t, h.url+"/v1/tenants/acme/devices", token, map[string]string{"name": "d1"}); status != 201 {
		t.Fatalf("create device: %d", status)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	h2 := startServe(t, vars)
	if strings.Contains(h2.stdout.String(), "Generated") {
		t.Error("the second start generated a new operator token")
	}
	if status, m := get(t, h2.url+"/v1/tenants/acme/devices/d1", token); status != 200 || m["username"] != "acme/d1" {
		t.Errorf("device after restart with the old session: %d %v", status, m)
	}
	if status, _ := get(t, h2.url+"/v1/admin/tenants", strings.TrimSpace(string(adminToken))); status != 200 {
		t.Errorf("kept operator token after restart: %d", status)
	}
	// Prometheus metrics, for the operator only.
	req, _ := http.NewRequest("GET", h2.url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(adminToken)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "process_cpu_seconds_total") || !strings.Contains(string(body), "roost_tenant_brokers") {
		t.Errorf("/metrics: %d\n%.500s", resp.StatusCode, body)
	}
	if status, _ := get(t, h2.url+"/metrics", token); status != 403 {
		t.Errorf("/metrics with a console session: %d, want 403", status)
	}
	if strings.Contains(h2.stderr.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", h2.stderr)
	}
}

func TestServeOnPostgres(t *testing.T) {
	url := testenv.PostgresURL(t)
	h := startServe(t, map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_DATABASE_URL": url, "ROOST_ADMIN_TOKEN": "rop_0123456789abcdef"})
	if status, _ := get(t, h.url+"/readyz", ""); status != 200 {
		t.Fatalf("readyz on postgres: %d", status)
	}
	if !strings.Contains(h.stderr.String(), "database=postgres") {
		t.Errorf("serve did not use postgres:\n%s", h.stderr)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"migrate", "--database-url", url}, env(nil), &out, &out); err != nil || !strings.Contains(out.String(), "up to date") {
		t.Errorf("migrate after serve: %v %q", err, out.String())
	}
}

func TestMigrateCommand(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"migrate", "--data-dir", dir}, env(nil), &out, &out); err != nil || !strings.Contains(out.String(), "applied 0001_directory") {
		t.Fatalf("first migrate: %v %q", err, out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"migrate", "--data-dir", dir}, env(nil), &out, &out); err != nil || !strings.Contains(out.String(), "up to date") {
		t.Fatalf("second migrate: %v %q", err, out.String())
	}
}

// TestServeProfilerOnlyWhenAsked: --debug-addr serves Go's profiler on its
// own listener; the API never does.
func TestServeProfilerOnlyWhenAsked(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	debug := ln.Addr().String()
	ln.Close()
	h := startServe(t, map[string]string{"ROOST_DATA_DIR": t.TempDir()}, "--debug-addr", debug)
	resp, err := http.Get("http://" + debug + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(b) == 0 {
		t.Errorf("profiler: %d %q", resp.StatusCode, b)
	}
	if code, _ := post(t, "http://"+debug+"/debug/gc", "", nil); code != 204 {
		t.Errorf("POST /debug/gc: %d", code)
	}
	if code, _ := get(t, h.url+"/debug/pprof/", ""); code != 404 {
		t.Errorf("the API serves /debug/pprof/: %d", code)
	}
}

// TestServeBilling: with a Stripe key (stripe-mock), a webhook secret and
// the example plans file, `roost serve` bills: the billing page says so and
// Checkout answers a URL for a plan the file priced.
//
// Checkout needs a verified email: the verification mail, a file in the
// data dir's mail folder without ROOST_SMTP_URL, carries the token.
func TestServeBilling(t *testing.T) {
	dataDir := t.TempDir()
	h := startServe(t, map[string]string{
		"ROOST_DATA_DIR":              dataDir,
		"ROOST_STRIPE_KEY":            "sk_test_123",
		"ROOST_STRIPE_WEBHOOK_SECRET": "whsec_test",
		"ROOST_STRIPE_API_URL":        testenv.StripeURL(t),
		"ROOST_PLANS_FILE":            "../../docs/plans.example.yaml",
	})
	status, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "b@example.com", "password": "correct horse battery"})
	if status != 201 {
		t.Fatalf("signup: %d %v", status, m)
	}
	token := m["token"].(string)
	if status, _ := post(t, h.url+"/v1/tenants", token, map[string]string{"slug": "acme"}); status != 201 {
		t.Fatalf("create tenant: %d", status)
	}
	status, m = post(t, h.url+"/v1/tenants/acme/billing/checkout", token, map[string]string{"plan": "business"})
	if status != 403 || m["code"] != "email_unverified" {
		t.Fatalf("checkout before the email is verified: %d %v, want 403 email_unverified", status, m)
	}
	verifyByMail(t, h.url, filepath.Join(dataDir, "mail"), "b@example.com", token)
	status, m = post(t, h.url+"/v1/tenants/acme/billing/checkout", token, map[string]string{"plan": "business"})
	if u, _ := m["url"].(string); status != 200 || !strings.HasPrefix(u, "https://") {
		t.Fatalf("checkout: %d %v", status, m)
	}
	status, m = post(t, h.url+"/v1/tenants/acme/billing/checkout", token, map[string]string{"plan": "enterprise"})
	if status != 400 || m["field"] != "plan" {
		t.Errorf("checkout to the unpriced enterprise plan: %d %v", status, m)
	}
	if !strings.Contains(h.stderr.String(), "billing on") {
		t.Errorf("the log does not say billing is on:\n%s", h.stderr)
	}
}

// verifyByMail waits (up to 20 s) for the verification mail to email in
// dir, checks that its link points at the console, and verifies with it,
// signed in with session (the account's, which stays signed in).
func verifyByMail(t *testing.T, url, dir, email, session string) {
	t.Helper()
	re := regexp.MustCompile(`(http://[^\s]+)/verify\?token=([A-Za-z0-9_.-]+)`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ms, _ := mail.ReadFolder(dir)
		for _, m := range ms {
			if g := re.FindStringSubmatch(m.Text); m.To == email && g != nil {
				if status, r := post(t, url+"/v1/verify", session, map[string]string{"token": g[2]}); status != 200 || r["email_verified"] != true {
					t.Fatalf("verify: %d %v", status, r)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no verification mail to %s in %s after 20 s (%d mails)", email, dir, len(ms))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
