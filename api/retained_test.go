package api_test

import (
	"net/url"
	"strings"
	"testing"
)

// TestRetainedList: retained messages published through the API are
// listed by filter, paged, with text and base64 previews; a bad filter is
// a 400.
func TestRetainedList(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	tok := u.token
	for _, m := range []map[string]any{
		{"topic": "lights/a", "payload": "on", "retain": true, "qos": 1},
		{"topic": "lights/b", "payload": strings.Repeat("é", 200), "retain": true},
		{"topic": "lights/c", "payload": "AAEC/w==", "encoding": "base64", "retain": true},
		{"topic": "doors/a", "payload": "shut", "retain": true},
		{"topic": "lights/d", "payload": "not retained"},
	} {
		want(t, e.do("POST", "/v1/tenants/acme/messages", tok, m), 202, "publish "+m["topic"].(string))
	}
	r := e.do("GET", "/v1/tenants/acme/retained?filter="+url.QueryEscape("lights/#")+"&limit=2", tok, nil)
	want(t, r, 200, "first page")
	items := r.json()["items"].([]any)
	if len(items) != 2 || r.str("next_cursor") == "" {
		t.Fatalf("first page: got %s, want 2 items and a cursor", r.body)
	}
	a, b := items[0].(map[string]any), items[1].(map[string]any)
	if a["topic"] != "lights/a" || a["payload_preview"] != "on" || a["qos"] != float64(1) || a["size"] != float64(2) {
		t.Errorf("lights/a = %v, want on, qos 1, size 2", a)
	}
	if b["topic"] != "lights/b" || b["truncated"] != true || b["size"] != float64(400) || b["encoding"] != "text" || len(b["payload_preview"].(string)) != 256 {
		t.Errorf("lights/b = %v, want a 256-byte text preview of 400 bytes, truncated", b)
	}
	r = e.do("GET", "/v1/tenants/acme/retained?filter="+url.QueryEscape("lights/#")+"&limit=2&cursor="+r.str("next_cursor"), tok, nil)
	want(t, r, 200, "second page")
	items = r.json()["items"].([]any)
	if len(items) != 1 || r.str("next_cursor") != "" {
		t.Fatalf("second page: got %s, want lights/c alone", r.body)
	}
	if c := items[0].(map[string]any); c["topic"] != "lights/c" || c["encoding"] != "base64" || c["payload_preview"] != "AAEC/w==" {
		t.Errorf("lights/c = %v, want base64 AAEC/w==", c)
	}
	r = e.do("GET", "/v1/tenants/acme/retained", tok, nil)
	if want(t, r, 200, "all"); len(r.json()["items"].([]any)) != 4 {
		t.Errorf("all retained: got %s, want 4", r.body)
	}
	wantProblem(t, e.do("GET", "/v1/tenants/acme/retained?filter="+url.QueryEscape("a/#/b"), tok, nil), 400, "invalid", "filter", "bad filter")
}
