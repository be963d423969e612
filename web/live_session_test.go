package web_test

import (
	"bufio"
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/dataplane"
)

// liveStream opens a browser's live stream of tenant and returns its lines,
// closed when the stream ends.
func (b *browser) liveStream(tenant string) <-chan string {
	b.s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	b.s.t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.s.url+"/tenants/"+tenant+"/live/stream?filter=%23", nil)
	resp, err := b.http.Do(req)
	if err != nil {
		b.s.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b.s.t.Fatalf("live stream: %d", resp.StatusCode)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return lines
}

// waitLine waits for a line containing want; false if the stream ended or
// the wait timed out first. Lines containing never fail the test.
func waitLine(t *testing.T, lines <-chan string, want, never string, within time.Duration) (found, ended bool) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return false, true
			}
			if never != "" && strings.Contains(l, never) {
				t.Errorf("the stream delivered %q", l)
			}
			if want != "" && strings.Contains(l, want) {
				return true, false
			}
		case <-deadline:
			return false, false
		}
	}
}

// TestConsoleLiveStreamEndsWithAccess: an open live view stops with the
// access that opened it. A member removed from the tenant, or a session
// logged out, no longer receives the tenant's messages on a stream opened
// before.
func TestConsoleLiveStreamEndsWithAccess(t *testing.T) {
	s := newStack(t)
	owner, viewer, leaver := s.browser(), s.browser(), s.browser()
	owner.signup("owner")
	viewerEmail, leaverEmail := viewer.signup("viewer"), leaver.signup("leaver")
	owner.tenant("acme")
	owner.get("/tenants/acme/members")
	for _, email := range []string{viewerEmail, leaverEmail} {
		if a := owner.post("/tenants/acme/members", url.Values{"email": {email}, "role": {"viewer"}}); a.status != http.StatusSeeOther {
			t.Fatalf("add %s: %d %s", email, a.status, a.body)
		}
	}
	viewerID := s.accountID("acme", viewerEmail)

	removed, loggedOut := viewer.liveStream("acme"), leaver.liveStream("acme")
	for _, l := range []<-chan string{removed, loggedOut} {
		if found, _ := waitLine(t, l, "event: ready", "", 5*time.Second); !found {
			t.Fatal("the stream did not start")
		}
	}
	publish := func(payload string) {
		t.Helper()
		if err := s.hub.Publish(t.Context(), "acme", dataplane.Message{Topic: "t", Payload: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
	}
	publish("before")
	for _, l := range []<-chan string{removed, loggedOut} {
		if found, _ := waitLine(t, l, "before", "", 5*time.Second); !found {
			t.Fatal("a message before the change was not streamed")
		}
	}

	if a := owner.post("/tenants/acme/members/"+viewerID+"/delete", nil); a.status != http.StatusSeeOther {
		t.Fatalf("remove the viewer: %d", a.status)
	}
	leaver.get("/tenants")
	if a := leaver.post("/logout", nil); a.status != http.StatusSeeOther {
		t.Fatalf("logout: %d", a.status)
	}
	time.Sleep(1500 * time.Millisecond)
	publish("after")
	for name, l := range map[string]<-chan string{"removed member": removed, "logged-out session": loggedOut} {
		if _, ended := waitLine(t, l, "", "after", 5*time.Second); !ended {
			t.Errorf("the %s's stream is still open", name)
		}
	}
}
