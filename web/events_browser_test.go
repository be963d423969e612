package web_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/eclipse/paho.golang/paho"
)

// TestBrowserEventHistory: in Chromium, a real device's connect shows on
// the events page; with more events stored, the page holds 50, filters by
// type and device from its form, and leads to older events.
func TestBrowserEventHistory(t *testing.T) {
	s := newStack(t)
	ctx := chrome(t)
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v\nconsole log:\n%s", what, err, s.logs)
		}
	}
	eval := func(what, js string) int {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		v, err := chromedp.Run(sctx, chromedp.Evaluate[int](js))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
	wait := func(what, predicate string) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if _, err := chromedp.Run(sctx, chromedp.Poll[bool](predicate, chromedp.WithPollingTimeout(15*time.Second))); err != nil {
			t.Fatalf("%s: %v\nconsole log:\n%s", what, err, s.logs)
		}
	}
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	run("sign up",
		chromedp.Navigate(s.url+"/signup"),
		chromedp.WaitVisible(css(`#password2`)),
		chromedp.SendKeys(css(`#email`), "events@example.com"),
		chromedp.SendKeys(css(`#password`), "correct horse battery"),
		chromedp.SendKeys(css(`#password2`), "correct horse battery"),
		chromedp.Submit(css(`#password2`)),
		chromedp.WaitVisible(css(`#slug`)),
	)
	// The tenants page has a #name too: wait until it is gone.
	run("create tenant", chromedp.SendKeys(css(`#slug`), "acme"), chromedp.Submit(css(`#slug`)), chromedp.WaitNotPresent(css(`#slug`)), chromedp.WaitVisible(css(`#name`)))
	run("create device", chromedp.SendKeys(css(`#name`), "sensor-1"), chromedp.Submit(css(`#name`)), chromedp.WaitVisible(css(`#cred-secret`)))
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	secret, err := chromedp.Run(sctx, chromedp.Text(css(`#cred-secret`)))
	cancel()
	if err != nil {
		t.Fatal(err)
	}

	conn, err := net.Dial("tcp", s.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	if _, err := c.Connect(cctx, &paho.Connect{ClientID: "sensor-1", KeepAlive: 30, CleanStart: true, Username: "acme/sensor-1", UsernameFlag: true,
		Password: []byte(secret), PasswordFlag: true}); err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(&paho.Disconnect{})
	// The event is stored off the connection's path: reload until it shows.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		run("open events", chromedp.Navigate(s.url+"/tenants/acme/events"), chromedp.WaitVisible(css(`main h1`)))
		if eval("the connect", `[...document.querySelectorAll("main tbody tr")].filter(r => r.textContent.includes("connected") && r.textContent.includes("sensor-1")).length`) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the device's connect is not on the events page after 10s")
		}
	}
	screenshot(t, ctx, "events-01-connected")

	addEvents(t, s, "acme", 60)
	run("reload", chromedp.Navigate(s.url+"/tenants/acme/events"), chromedp.WaitVisible(css(`main h1`)))
	if n := eval("rows", `document.querySelectorAll("main tbody tr").length`); n != 50 {
		t.Errorf("first page: %d rows, want 50", n)
	}
	run("filter by type and device",
		chromedp.SetValue(css(`#type`), "auth_failed"),
		chromedp.SendKeys(css(`#device`), "d-1"),
		chromedp.Submit(css(`#device`)),
		// The filtered page fits one page: no link to older events.
		chromedp.WaitNotPresent(css(`a[rel="next"]`)),
		chromedp.WaitVisible(css(`main h1`)),
	)
	wait("the filtered page", `location.search.includes("type=auth_failed") && location.search.includes("device=d-1")`)
	screenshot(t, ctx, "events-02-filtered")
	if n := eval("filtered rows", `document.querySelectorAll("main tbody tr").length`); n != 10 {
		t.Errorf("auth_failed of d-1: %d rows, want 10", n)
	}
	if n := eval("other rows", `[...document.querySelectorAll("main tbody tr")].filter(r => !r.textContent.includes("auth_failed") || !r.textContent.includes("d-1")).length`); n != 0 {
		t.Errorf("%d rows of another type or device", n)
	}
	run("all again, then older", chromedp.Navigate(s.url+"/tenants/acme/events"), chromedp.WaitVisible(css(`a[rel="next"]`)), chromedp.Click(css(`a[rel="next"]`)),
		chromedp.WaitNotPresent(css(`a[rel="next"]`)), chromedp.WaitVisible(css(`main h1`)))
	wait("the older page", `location.search.includes("after=")`)
	if n := eval("older rows", `document.querySelectorAll("main tbody tr").length`); n != 11 {
		t.Errorf("older page: %d rows, want the 11 left (60 stored, the connect)", n)
	}
	screenshot(t, ctx, "events-03-older")
}
