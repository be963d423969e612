package cluster_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/roosthub/roost/cluster"
	"github.com/roosthub/roost/internal/testenv"
)

// TestInternalAPIThrottlesWrongTokens: wrong operator tokens on a node's
// internal API are counted per address: ten, then 429 with Retry-After;
// the right token still passes from that address, and another address
// keeps its own count.
func TestInternalAPIThrottlesWrongTokens(t *testing.T) {
	node := httptest.NewServer(cluster.Serve(nil, nil, token, nil))
	t.Cleanup(node.Close)
	get := func(from, bearer string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", node.URL+cluster.Prefix+"/tenants/acme/events", nil)
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := testenv.ClientFrom(from).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i := range 10 {
		if r := get("127.0.0.2", fmt.Sprintf("rop_guess-%d-0123456789", i)); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i, r.StatusCode)
		}
	}
	if r := get("127.0.0.2", "rop_guess-x-0123456789"); r.StatusCode != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Errorf("the eleventh guess: %d, Retry-After %q", r.StatusCode, r.Header.Get("Retry-After"))
	}
	if r := get("127.0.0.2", token); r.StatusCode != http.StatusOK {
		t.Errorf("the right token from the guessing address: %d", r.StatusCode)
	}
	if r := get("127.0.0.3", "rop_guess-y-0123456789"); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("a wrong token from another address: %d, want 401", r.StatusCode)
	}
}
