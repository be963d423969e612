package api_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
)

// routeSet lists every METHOD path the router serves, in the spec's form.
func routeSet(t *testing.T, r chi.Routes) []string {
	t.Helper()
	var out []string
	err := chi.Walk(r, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if route != "/" {
			route = strings.TrimSuffix(route, "/")
		}
		out = append(out, method+" "+route)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func TestRoutesMatchSpec(t *testing.T) {
	e := newEnv(t)
	routed := routeSet(t, e.api.Router())
	var specified []string
	for path, item := range loadSpec(t).Paths.Map() {
		for method := range item.Operations() {
			specified = append(specified, method+" "+path)
		}
	}
	slices.Sort(specified)
	for _, r := range routed {
		if !slices.Contains(specified, r) {
			t.Errorf("route %s is served but not in openapi.yaml", r)
		}
	}
	for _, s := range specified {
		if !slices.Contains(routed, s) {
			t.Errorf("openapi.yaml has %s but the router does not serve it", s)
		}
	}
	if len(routed) < 30 {
		t.Errorf("walked only %d routes: %v", len(routed), routed)
	}
}
