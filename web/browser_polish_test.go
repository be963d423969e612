package web_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/tenants"
)

// TestBrowserConsolePolish: in a real browser, at desktop and at phone
// width: the operator's table of 120 tenants (sorted by a click, searched,
// paged) and a tenant's quota page; the live view with its sender column,
// UTC times, pause (messages held, then shown) and clear; a device's page
// with its metadata apart; an error page that leads back. Screenshots of
// each go to the artifacts directory.
func TestBrowserConsolePolish(t *testing.T) {
	s := newStack(t)
	ctx := chrome(t)
	acct, err := s.store.CreateAccount(t.Context(), tenants.Signup{Email: "fleet@example.com", Password: "correct horse battery"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 120 {
		if _, err := s.store.CreateTenant(t.Context(), acct.ID, tenants.TenantInput{Slug: fmt.Sprintf("t-%03d", i), Name: fmt.Sprintf("Tenant %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.store.CreateDevice(t.Context(), "t-064", tenants.DeviceInput{Name: "d0"}); err != nil {
		t.Fatal(err)
	}
	b := steps{t, ctx, s}
	run, text := b.run, b.text
	wait := b.wait
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	firstRow := `document.querySelector("#admin-tenants tbody tr td a").textContent`

	run("operator login",
		chromedp.Navigate(s.url+"/admin/login"),
		chromedp.WaitVisible(css(`#token`)),
		chromedp.SendKeys(css(`#token`), operatorToken),
		chromedp.Submit(css(`#token`)),
		chromedp.WaitVisible(css(`#admin-tenants`)),
	)
	if got := text(`#admin-count`); !strings.Contains(got, "120 tenants, page 1 of 3") {
		t.Errorf("the table's count: %q", got)
	}
	screenshot(t, ctx, "polish-01-admin-table")
	run("sort by devices, most first",
		chromedp.Click(css(`th[aria-sort] a[href*="sort=devices"]`)), // ascending
		chromedp.WaitVisible(css(`th[aria-sort="ascending"]`)),
		chromedp.Click(css(`th[aria-sort="ascending"] a`)), // then descending
		chromedp.WaitVisible(css(`th[aria-sort="descending"]`)),
	)
	wait("t-064 first by devices", firstRow+` === "t-064"`)
	run("next page", chromedp.Click(css(`a[rel="next"]`)), chromedp.WaitVisible(css(`a[rel="prev"]`)))
	run("search",
		chromedp.SetValue(css(`#admin-q`), "Tenant 11"),
		chromedp.Submit(css(`#admin-q`)),
		chromedp.WaitVisible(css(`#admin-tenants`)),
	)
	if got := text(`#admin-count`); !strings.HasPrefix(got, "11 tenants matching") {
		t.Errorf("after the search: %q", got)
	}
	run("a tenant's page", chromedp.Click(css(`a[href="/admin/tenants/t-011"]`)), chromedp.WaitVisible(css(`#admin-quotas`)))
	if got := text(`#admin-quotas`); !strings.Contains(got, "Messages per month") || !strings.Contains(got, "messages_per_month") {
		t.Errorf("the quota table: %q", got)
	}
	screenshot(t, ctx, "polish-02-admin-tenant")

	// A tenant of the visitor's own, with a device that has metadata.
	run("sign up",
		chromedp.Navigate(s.url+"/signup"),
		chromedp.WaitVisible(css(`#password2`)),
		chromedp.SendKeys(css(`#email`), "polish@example.com"),
		chromedp.SendKeys(css(`#password`), "correct horse battery"),
		chromedp.SendKeys(css(`#password2`), "correct horse battery"),
		chromedp.Submit(css(`#password2`)),
		chromedp.WaitVisible(css(`#slug`)),
		chromedp.SendKeys(css(`#slug`), "acme"),
		chromedp.Submit(css(`#slug`)),
		chromedp.WaitVisible(css(`#metadata`)),
		chromedp.SendKeys(css(`#name`), "sensor-1"),
		chromedp.SetValue(css(`#metadata`), "room=lab\nmodel=T1000"),
		chromedp.Submit(css(`#name`)),
		chromedp.WaitVisible(css(`#cred-secret, .field-error`)),
	)
	if strings.Contains(text(`main`), "Copy the secret") == false {
		t.Fatalf("the device was not created: %q", text(`main`))
	}
	secret := text(`#cred-secret`)
	run("reload the credentials page", chromedp.Reload(), chromedp.WaitVisible(css(`#secret-gone`)))
	screenshot(t, ctx, "polish-03-secret-shown-once")
	run("the device's page", chromedp.Navigate(s.url+"/tenants/acme/devices/sensor-1"), chromedp.WaitVisible(css(`#metadata`)))
	if got := text(`#metadata`); !strings.Contains(got, "room") || !strings.Contains(got, "T1000") {
		t.Errorf("the metadata section: %q", got)
	}
	screenshot(t, ctx, "polish-04-device")

	// Live: sender, UTC, pause, clear.
	run("open the live viewer", chromedp.Navigate(s.url+"/tenants/acme/live"))
	wait("the live viewer to watch", `document.getElementById("live-status").textContent.startsWith("Watching")`)
	conn, err := net.Dial("tcp", s.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	dev := paho.NewClient(paho.ClientConfig{Conn: conn})
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dev.Connect(cctx, &paho.Connect{ClientID: "sensor-1", KeepAlive: 30, CleanStart: true, Username: "acme/sensor-1", UsernameFlag: true,
		Password: []byte(secret), PasswordFlag: true}); err != nil {
		t.Fatal(err)
	}
	defer dev.Disconnect(&paho.Disconnect{})
	publish := func(payload string) {
		t.Helper()
		if _, err := dev.Publish(cctx, &paho.Publish{Topic: "telemetry/sensor-1", QoS: 1, Payload: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
	}
	publish("first")
	wait("the first message", `document.getElementById("live-rows").textContent.includes("first")`)
	row := text(`#live-rows tr`)
	if !strings.Contains(row, "sensor-1") || !strings.Contains(row, " UTC") {
		t.Errorf("a live row lacks its sender or a UTC time: %q", row)
	}
	run("pause", chromedp.Click(css(`#live-pause`)))
	publish("while paused")
	wait("the paused view to hold the message", `document.getElementById("live-status").textContent.includes("1 new message held")`)
	if strings.Contains(text(`#live-rows`), "while paused") {
		t.Error("a message arrived on the page while it was paused")
	}
	screenshot(t, ctx, "polish-05-live-paused")
	run("resume", chromedp.Click(css(`#live-pause`)))
	wait("the held message shown", `document.getElementById("live-rows").textContent.includes("while paused")`)
	screenshot(t, ctx, "polish-06-live")
	run("clear", chromedp.Click(css(`#live-clear`)))
	wait("the view cleared", `document.getElementById("live-rows").children.length === 0`)

	// An error page leads back where the visitor came from.
	run("an error", chromedp.Navigate(s.url+"/tenants/acme/devices/nobody"), chromedp.WaitVisible(css(`#error-back`)))
	screenshot(t, ctx, "polish-07-error")

	for _, p := range []string{"cas", "audit", "export-rules"} {
		run("open "+p, chromedp.Navigate(s.url+"/tenants/acme/"+p), chromedp.WaitVisible(css(`main h1`)))
		screenshot(t, ctx, "polish-08-"+p)
		if got := text(`main`); p == "audit" && !strings.Contains(got, "device.create") {
			t.Errorf("the audit trail: %q", got)
		}
	}

	run("phone width", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	for _, p := range []string{"/admin", "/admin/tenants/t-011", "/tenants/acme/live", "/tenants/acme/devices/sensor-1", "/tenants/acme/members", "/tenants/acme/acl", "/tenants/acme/cas", "/tenants/acme/audit", "/tenants/acme/export-rules"} {
		run("open "+p+" on a phone", chromedp.Navigate(s.url+p), chromedp.WaitVisible(css(`main h1`)))
		wait(p+" fits a phone's width", `document.documentElement.scrollWidth <= window.innerWidth + 1`)
		screenshot(t, ctx, "polish-phone"+strings.ReplaceAll(p, "/", "-"))
	}
}
