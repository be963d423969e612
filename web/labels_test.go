package web_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestConsoleDeviceLabels: an admin replaces a device's groups and
// metadata from its page; a bad group or metadata line comes back 400 next
// to its field with what was sent and changes nothing; a viewer gets 403
// and a stranger 404, and neither changes anything; a form without its
// CSRF token is refused.
func TestConsoleDeviceLabels(t *testing.T) {
	s := newStack(t)
	owner := s.browser()
	owner.signup("owner")
	owner.tenant("acme")
	owner.get("/tenants/acme/devices")
	if a := owner.post("/tenants/acme/devices", url.Values{"name": {"d1"}, "groups": {"lab"}, "metadata": {"room=r1"}}); a.status != http.StatusSeeOther {
		t.Fatalf("create d1: %d", a.status)
	}
	page := owner.get("/tenants/acme/devices/d1")
	if !strings.Contains(page.body, `id="labels_groups" name="groups" value="lab"`) || !strings.Contains(page.body, ">room=r1</textarea>") {
		t.Fatalf("the form does not start from the device's groups and metadata:\n%s", page.body)
	}
	labels := func(what string) (string, string) {
		t.Helper()
		d, err := s.store.Device(context.Background(), "acme", "d1")
		if err != nil {
			t.Fatal(err)
		}
		var md []string
		for _, k := range []string{"room", "model"} {
			if v, ok := d.Metadata[k]; ok {
				md = append(md, k+"="+v)
			}
		}
		return strings.Join(d.Groups, ","), strings.Join(md, ",")
	}
	path := "/tenants/acme/devices/d1/labels"

	for _, tc := range []struct{ name, groups, metadata, field string }{
		{"a bad group", "ok, Bad/Group", "room=r9", "groups"},
		{"a line without =", "ops", "room r9", "metadata"},
		{"an empty metadata key", "ops", "=r9", "metadata"},
	} {
		a := owner.post(path, url.Values{"groups": {tc.groups}, "metadata": {tc.metadata}})
		if a.status != http.StatusBadRequest || !strings.Contains(a.body, `name="`+tc.field+`"`) ||
			!strings.Contains(a.body, "aria-invalid") || !strings.Contains(a.body, tc.metadata+"</textarea>") {
			t.Errorf("%s: got %d, want 400 with %s marked and the form as sent", tc.name, a.status, tc.field)
		}
		if g, m := labels(tc.name); g != "lab" || m != "room=r1" {
			t.Errorf("%s changed the device: groups %q, metadata %q", tc.name, g, m)
		}
	}

	viewer := s.browser()
	email := viewer.signup("viewer")
	owner.get("/tenants/acme/members")
	if a := owner.post("/tenants/acme/members", url.Values{"email": {email}, "role": {"viewer"}}); a.status != http.StatusSeeOther {
		t.Fatalf("add viewer: %d", a.status)
	}
	if a := viewer.get("/tenants/acme/devices/d1"); a.status != http.StatusOK || strings.Contains(a.body, `id="labels-form"`) {
		t.Errorf("a viewer's device page: %d, offers the form: %v", a.status, strings.Contains(a.body, `id="labels-form"`))
	}
	if a := viewer.post(path, url.Values{"groups": {"pwned"}, "metadata": {"room=pwned"}}); a.status != http.StatusForbidden {
		t.Errorf("a viewer's change: got %d, want 403", a.status)
	}
	stranger := s.browser()
	stranger.signup("stranger")
	stranger.tenant("evil")
	if a := stranger.post(path, url.Values{"groups": {"pwned"}}); a.status != http.StatusNotFound {
		t.Errorf("a stranger's change: got %d, want 404", a.status)
	}
	if a := owner.post(path, url.Values{"csrf": {"forged"}, "groups": {"pwned"}}); a.status != http.StatusForbidden {
		t.Errorf("a forged CSRF token: got %d, want 403", a.status)
	}
	if g, m := labels("refused changes"); g != "lab" || m != "room=r1" {
		t.Fatalf("refused changes changed the device: groups %q, metadata %q", g, m)
	}

	owner.get("/tenants/acme/devices/d1")
	if a := owner.post(path, url.Values{"groups": {"ops, field"}, "metadata": {"room=r2\r\nmodel=m5\r\n"}}); a.status != http.StatusSeeOther {
		t.Fatalf("save: got %d, want 303", a.status)
	}
	if g, m := labels("saved"); g != "field,ops" || m != "room=r2,model=m5" {
		t.Errorf("saved: groups %q, metadata %q; want field,ops and room=r2,model=m5", g, m)
	}
	if a := owner.post(path, url.Values{"groups": {""}, "metadata": {""}}); a.status != http.StatusSeeOther {
		t.Fatalf("clear: got %d, want 303", a.status)
	}
	if g, m := labels("cleared"); g != "" || m != "" {
		t.Errorf("cleared: groups %q, metadata %q; want none", g, m)
	}
}

// TestBrowserDeviceLabels: in a real browser, an admin edits a device's
// groups and metadata on its page and sees them saved.
func TestBrowserDeviceLabels(t *testing.T) {
	s := newStack(t)
	ctx := chrome(t)
	b := steps{t, ctx, s}
	run, text := b.run, b.text
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	run("sign up and create a device",
		chromedp.Navigate(s.url+"/signup"),
		chromedp.WaitVisible(css(`#password2`)),
		chromedp.SendKeys(css(`#email`), "labels@example.com"),
		chromedp.SendKeys(css(`#password`), "correct horse battery"),
		chromedp.SendKeys(css(`#password2`), "correct horse battery"),
		chromedp.Submit(css(`#password2`)),
		chromedp.WaitVisible(css(`#slug`)),
		chromedp.SendKeys(css(`#slug`), "acme"),
		chromedp.Submit(css(`#slug`)),
		chromedp.WaitNotPresent(css(`#slug`)),
		chromedp.WaitVisible(css(`#name`)),
		chromedp.SendKeys(css(`#name`), "sensor-1"),
		chromedp.SendKeys(css(`#groups`), "lab"),
		chromedp.Submit(css(`#name`)),
		chromedp.WaitVisible(css(`#cred-secret`)),
	)
	run("open the device page",
		chromedp.Navigate(s.url+"/tenants/acme/devices/sensor-1"),
		chromedp.WaitVisible(css(`#labels-form`)),
	)
	if g := text(`p#groups`); !strings.Contains(g, "lab") {
		t.Fatalf("groups before: %q", g)
	}
	// The saved page is the first with a .flash: waiting for it waits for
	// the new page, not the one the form was on.
	run("save new groups and metadata",
		chromedp.SetValue(css(`#labels_groups`), "ops, field"),
		chromedp.SetValue(css(`#labels_metadata`), "room=r2\nmodel=m5"),
		chromedp.Submit(css(`#labels_groups`)),
		chromedp.WaitVisible(css(`.flash`)),
		chromedp.WaitVisible(css(`dl#metadata`)),
	)
	if g := text(`p#groups`); !strings.Contains(g, "field") || !strings.Contains(g, "ops") || strings.Contains(g, "lab") {
		t.Errorf("groups after saving: %q, want field and ops", g)
	}
	if m := text(`dl#metadata`); !strings.Contains(m, "r2") || !strings.Contains(m, "m5") {
		t.Errorf("metadata after saving: %q", m)
	}
	screenshot(t, ctx, "device-labels")
	if d, err := s.store.Device(context.Background(), "acme", "sensor-1"); err != nil || strings.Join(d.Groups, ",") != "field,ops" || d.Metadata["model"] != "m5" {
		t.Errorf("the store holds %+v (%v), want groups field,ops and model m5", d, err)
	}
}
