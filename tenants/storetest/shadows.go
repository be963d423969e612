package storetest

import (
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// shadowUpdate parses an update as a device would send it.
func shadowUpdate(t *testing.T, src, js string) tenants.ShadowUpdate {
	t.Helper()
	u, err := tenants.ParseShadowUpdate([]byte(js))
	if err != nil {
		t.Fatalf("parse %s: %v", js, err)
	}
	u.Source = src
	return u
}

// asJSON renders a part of a shadow to compare it with what a test expects.
func asJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func testShadows(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "shadows@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	mustDevice(t, s, "acme", "d1")
	mustDevice(t, s, "other", "d1")

	var mu sync.Mutex
	var changes []tenants.Change
	cancel := s.Changes().Subscribe(func(c tenants.Change) {
		if c.Kind == tenants.ShadowChanged {
			mu.Lock()
			changes = append(changes, c)
			mu.Unlock()
		}
	})
	defer cancel()

	sh, err := s.Shadow(ctx, "acme", "d1")
	if err != nil || sh.Version != 0 || len(sh.State.Desired) != 0 || sh.State.Delta == nil {
		t.Fatalf("new shadow = %+v, %v; want version 0, empty state", sh, err)
	}
	if _, err := s.Shadow(ctx, "acme", "nope"); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("unknown device's shadow: got %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateShadow(ctx, "acme", "nope", shadowUpdate(t, "api", `{"state":{"desired":{"a":1}}}`)); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("unknown device's update: got %v, want ErrNotFound", err)
	}

	sh, err = s.UpdateShadow(ctx, "acme", "d1", shadowUpdate(t, "api", `{"state":{"desired":{"led":"on","cfg":{"rate":5,"mode":"eco"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if sh.Version != 1 || asJSON(t, sh.State.Delta) != `{"cfg":{"mode":"eco","rate":5},"led":"on"}` {
		t.Errorf("after desired: version %d delta %s; want 1, everything desired", sh.Version, asJSON(t, sh.State.Delta))
	}
	if m, ok := sh.Metadata.Desired["cfg"].(map[string]any)["rate"].(map[string]any); !ok || m["timestamp"] == nil {
		t.Errorf("metadata.desired = %s, want a timestamp at cfg.rate", asJSON(t, sh.Metadata.Desired))
	}

	// The device reports part of it: 5.0 is 5.
	sh, err = s.UpdateShadow(ctx, "acme", "d1", shadowUpdate(t, "mqtt", `{"state":{"reported":{"led":"on","cfg":{"rate":5.0,"mode":"fast"},"temp":21}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := asJSON(t, sh.State.Delta); sh.Version != 2 || got != `{"cfg":{"mode":"eco"}}` {
		t.Errorf("after reported: version %d delta %s; want 2, {\"cfg\":{\"mode\":\"eco\"}}", sh.Version, got)
	}

	// A stale version changes nothing.
	stale := shadowUpdate(t, "api", `{"state":{"desired":{"led":"off"}},"version":1}`)
	if _, err := s.UpdateShadow(ctx, "acme", "d1", stale); !errors.Is(err, tenants.ErrConflict) {
		t.Errorf("stale version: got %v, want ErrConflict", err)
	}
	// The current one, and null deletes.
	sh, err = s.UpdateShadow(ctx, "acme", "d1", shadowUpdate(t, "api", `{"state":{"desired":{"cfg":{"mode":null},"led":null}},"version":2}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := asJSON(t, sh.State.Desired); sh.Version != 3 || got != `{"cfg":{"rate":5}}` || len(sh.State.Delta) != 0 {
		t.Errorf("after deletes: version %d desired %s delta %s; want 3, {\"cfg\":{\"rate\":5}}, {}", sh.Version, got, asJSON(t, sh.State.Delta))
	}
	if _, ok := sh.Metadata.Desired["led"]; ok {
		t.Errorf("metadata of a deleted key stays: %s", asJSON(t, sh.Metadata.Desired))
	}

	// Over max_shadow_bytes (free: 8 KiB): refused, nothing changes.
	big := `{"state":{"reported":{"blob":"` + strings.Repeat("x", 9000) + `"}}}`
	var qe *tenants.QuotaError
	if _, err := s.UpdateShadow(ctx, "acme", "d1", shadowUpdate(t, "mqtt", big)); !errors.As(err, &qe) || qe.Quota != "max_shadow_bytes" {
		t.Errorf("oversized shadow: got %v, want a max_shadow_bytes QuotaError", err)
	}

	// Bad updates.
	for _, bad := range []string{`{}`, `{"state":{"desired":[1]}}`, `{"state":{"reported":"x"}}`, `{"state":{"desired":{"a":1}},"extra":1}`, `not json`,
		`{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}}}}`} {
		if _, err := tenants.ParseShadowUpdate([]byte(bad)); !errors.Is(err, tenants.ErrInvalid) {
			t.Errorf("ParseShadowUpdate(%s): got %v, want ErrInvalid", bad, err)
		}
	}

	// The other tenant's device of the same name has its own.
	if o, err := s.Shadow(ctx, "other", "d1"); err != nil || o.Version != 0 {
		t.Errorf("other tenant's d1: version %d, %v; want 0", o.Version, err)
	}

	// It lasts.
	if reopen != nil {
		again, err := reopen().Shadow(ctx, "acme", "d1")
		if err != nil || again.Version != 3 || asJSON(t, again.State.Reported) != asJSON(t, sh.State.Reported) {
			t.Errorf("reopened: version %d reported %s, %v; want 3, %s", again.Version, asJSON(t, again.State.Reported), err, asJSON(t, sh.State.Reported))
		}
	}

	// Each change is an event and a change.
	evs, _, err := s.Events(ctx, "acme", tenants.EventQuery{Type: events.ShadowUpdated})
	if err != nil || len(evs) != 3 {
		t.Fatalf("shadow_updated events: %d, %v; want 3", len(evs), err)
	}
	if evs[0].Device != "d1" || evs[0].Count != 3 || evs[0].Reason != "api" {
		t.Errorf("newest event = %+v, want d1, version 3, api", evs[0])
	}
	mu.Lock()
	if len(changes) != 3 || changes[0] != (tenants.Change{Kind: tenants.ShadowChanged, Tenant: "acme", Device: "d1"}) {
		t.Errorf("changes = %+v, want 3 shadow changes of acme/d1", changes)
	}
	mu.Unlock()

	// It goes with the device.
	if err := s.DeleteDevice(ctx, "acme", "d1"); err != nil {
		t.Fatal(err)
	}
	mustDevice(t, s, "acme", "d1")
	if sh, err := s.Shadow(ctx, "acme", "d1"); err != nil || sh.Version != 0 || len(sh.State.Reported) != 0 {
		t.Errorf("shadow of a device deleted and made again: %+v, %v; want version 0, empty", sh, err)
	}
}
