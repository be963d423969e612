package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// TestSecretKeysOld: ROOST_SECRET_KEYS_OLD puts earlier operator tokens
// in the sealer's key ring; a token too short to be one stops start-up.
func TestSecretKeysOld(t *testing.T) {
	c, err := parseConfig("serve", nil, env(map[string]string{"ROOST_DATA_DIR": t.TempDir(),
		"ROOST_SECRET_KEYS_OLD": "rop_first-earlier-token, rop_second-earlier-token"}))
	if err != nil {
		t.Fatal(err)
	}
	ring, err := c.sealer("rop_current-operator-token")
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"rop_first-earlier-token", "rop_second-earlier-token"} {
		old, _ := dataout.NewSealer(dataout.KeyFromToken(tok))
		sealed := old.Seal([]byte("secret"), "ctx")
		if p, err := ring.Open(sealed, "ctx"); err != nil || string(p) != "secret" || !ring.Stale(sealed) {
			t.Errorf("a value sealed under %s: %q, %v, stale %v", tok, p, err, ring.Stale(sealed))
		}
	}
	stranger, _ := dataout.NewSealer(dataout.KeyFromToken("rop_never-configured-token"))
	if _, err := ring.Open(stranger.Seal([]byte("x"), "ctx"), "ctx"); err == nil {
		t.Error("a value sealed under a token not in the ring opened")
	}
	_, err = parseConfig("serve", nil, env(map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_SECRET_KEYS_OLD": "short"}))
	if err == nil || !strings.Contains(err.Error(), "ROOST_SECRET_KEYS_OLD") {
		t.Errorf("a short earlier token: %v, want an error naming ROOST_SECRET_KEYS_OLD", err)
	}
}

// TestResealSecretsLoop: with earlier operator tokens in the ring, the
// control plane's loop seals the destinations' and two-factor secrets
// sealed under them again under the current token, says once that the
// earlier tokens can be dropped, and keeps looking: a value sealed under
// an earlier token later (a process still on it during a rolling change)
// is sealed again at the next pass. Without earlier tokens it ends at once.
func TestResealSecretsLoop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := tenants.Open(ctx, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	const oldToken, newToken = "rop_the-earlier-operator-token", "rop_the-current-operator-token"
	old, _ := dataout.NewSealer(dataout.KeyFromToken(oldToken))
	current, _ := dataout.NewSealer(dataout.KeyFromToken(newToken))
	ring, _ := dataout.NewSealer(dataout.KeyFromToken(newToken), dataout.KeyFromToken(oldToken))
	owner, err := st.CreateAccount(ctx, tenants.Signup{Email: "owner@example.com", Password: "correct horse battery"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateTenant(ctx, owner.ID, tenants.TenantInput{Slug: "acme"}); err != nil {
		t.Fatal(err)
	}
	create := func() string {
		t.Helper()
		id := tenants.NewDestinationID()
		if _, err := st.CreateDestination(ctx, "acme", id, tenants.DestinationInput{Name: "hook-" + strings.TrimPrefix(id, "dst_"), Type: "webhook", URL: "https://hooks.example.com/" + id},
			tenants.Sealed{Secret: old.SealSecret("acme", id, "whsec_"+id)}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	opens := func(id string) bool {
		d, err := st.Destination(ctx, "acme", id)
		if err != nil {
			t.Fatal(err)
		}
		w, err := current.Webhook("acme", d)
		return err == nil && w.Secret == "whsec_"+id
	}
	first := create()
	// A value that opens under no key (sealed for another row): reported,
	// and it does not hold the earlier token back.
	moved := tenants.NewDestinationID()
	if _, err := st.CreateDestination(ctx, "acme", moved, tenants.DestinationInput{Name: "moved", Type: "webhook", URL: "https://hooks.example.com/moved"},
		tenants.Sealed{Secret: old.SealSecret("acme", first, "whsec_moved")}); err != nil {
		t.Fatal(err)
	}
	if err := st.SetUpMFA(ctx, owner.ID, old.Seal([]byte("JBSWY3DPEHPK3PXP"), "account-mfa/"+owner.ID)); err != nil {
		t.Fatal(err)
	}
	front, err := auth.New(auth.Config{Store: st, SigningKey: bytes.Repeat([]byte("k"), 32), AdminToken: newToken, Sealer: ring})
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()

	logs := &lineLog{lines: make(chan string, 100)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		resealSecrets(ctx, ring, st, front, 20*time.Millisecond, slog.New(logs))
	}()
	// The pass that reseals, then the one that finds nothing left.
	logs.wait(t, "open under no key")
	logs.wait(t, "secrets sealed again under the current operator token")
	logs.wait(t, "ROOST_SECRET_KEYS_OLD can be emptied")
	if !opens(first) {
		t.Error("the destination does not open under the current token alone")
	}
	if m, err := st.MFA(ctx, owner.ID); err != nil || ring.Stale(m.Secret) {
		t.Errorf("the two-factor secret is still under the earlier token: %v", err)
	}
	later := create()
	logs.wait(t, "secrets sealed again under the current operator token")
	logs.wait(t, "ROOST_SECRET_KEYS_OLD can be emptied") // said again
	if !opens(later) {
		t.Error("a destination sealed under the earlier token later does not open under the current token alone")
	}
	cancel()
	<-done

	ended := make(chan struct{})
	go func() {
		defer close(ended)
		resealSecrets(context.Background(), current, st, front, time.Hour, slog.New(logs))
	}()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop runs without earlier tokens")
	}
}

// lineLog hands each record's message to lines.
type lineLog struct{ lines chan string }

func (l *lineLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *lineLog) Handle(_ context.Context, r slog.Record) error {
	select {
	case l.lines <- r.Message:
	default:
	}
	return nil
}
func (l *lineLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *lineLog) WithGroup(string) slog.Handler      { return l }

// wait waits for a message containing s.
func (l *lineLog) wait(t *testing.T, s string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-l.lines:
			if strings.Contains(m, s) {
				return
			}
		case <-deadline:
			t.Fatalf("no log message with %q", s)
		}
	}
}
