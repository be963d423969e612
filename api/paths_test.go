package api_test

import (
	"net/http"
	"regexp"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/api"
)

// TestOwnsEveryRoute: every path the router serves is one api.Owns claims
// (with its parameters filled in), so the console sharing the port never
// takes one of the API's paths; and paths the console serves are not
// claimed.
func TestOwnsEveryRoute(t *testing.T) {
	e := newEnv(t)
	param := regexp.MustCompile(`\{[^}]+\}`)
	n := 0
	err := chi.Walk(e.api.Router(), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		n++
		if p := param.ReplaceAllString(route, "x"); !api.Owns(p) {
			t.Errorf("the router serves %s %s, but api.Owns(%q) = false: the console would take it", method, route, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 30 {
		t.Errorf("walked only %d routes", n)
	}
	for _, p := range []string{"/", "/login", "/admin", "/tenants/acme", "/static/app.css", "/v1", "/healthzz", "/metrics/x"} {
		if api.Owns(p) {
			t.Errorf("api.Owns(%q) = true, want false (a console path)", p)
		}
	}
}
