package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/internal/testenv"
)

// TestAccountLimitSettings: the account and sign-up limits are settings
// with ROOST_* twins, defaulted, and a bad value stops start-up naming it.
func TestAccountLimitSettings(t *testing.T) {
	c, err := parseConfig("serve", nil, env(map[string]string{"ROOST_DATA_DIR": t.TempDir()}))
	if err != nil || c.MaxFreeTenants != 3 || c.TenantsPerDay != 10 || c.SignupsPerHour != 600 || c.PasswordHashes != 0 {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	c, err = parseConfig("serve", []string{"--max-free-tenants", "0"}, env(map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_MAX_FREE_TENANTS": "5", "ROOST_PASSWORD_HASHES": "4", "ROOST_SIGNUPS_PER_HOUR": "0"}))
	if err != nil || c.MaxFreeTenants != 0 || c.PasswordHashes != 4 || c.authConfig().MaxFreeTenants != -1 || c.authConfig().SignupsPerHour != -1 {
		t.Fatalf("flag over env, zero as no limit: %+v, %+v, %v", c, c.authConfig(), err)
	}
	for name, v := range map[string]string{"ROOST_MAX_FREE_TENANTS": "-1", "ROOST_TENANTS_PER_DAY": "-5", "ROOST_SIGNUPS_PER_HOUR": "lots", "ROOST_PASSWORD_HASHES": "5000"} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), []string{"serve"}, env(map[string]string{"ROOST_DATA_DIR": t.TempDir(), name: v}), &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), name) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s=%s: got %v, want one line naming it", name, v, err)
		}
	}
}

// TestDataPlaneMetricsThrottle: a data-plane node's /metrics counts wrong
// operator tokens per address with its internal API: past ten, 429; the
// right token always passes.
func TestDataPlaneMetricsThrottle(t *testing.T) {
	op := auth.NewOperator("rop_node-test-token-0123456789", nil, nil)
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "roost_up 1") })
	srv := httptest.NewServer(dataPlaneMux(nil, &atomic.Bool{}, op, metrics))
	t.Cleanup(srv.Close)
	get := func(bearer string) int {
		req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := testenv.ClientFrom("127.0.0.2").Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 10 {
		if s := get(fmt.Sprintf("rop_guess-%d", i)); s != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i, s)
		}
	}
	if s := get("rop_guess-x"); s != http.StatusTooManyRequests {
		t.Errorf("the eleventh guess: %d, want 429", s)
	}
	if s := get("rop_node-test-token-0123456789"); s != http.StatusOK {
		t.Errorf("the right token: %d", s)
	}
}
