package web_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/dataplane"
)

// TestBrowserRetainedAndSession: in a real browser, the retained page
// filters and deletes a message, and the device page shows a connected
// device's subscriptions and its queue, and purges it.
func TestBrowserRetainedAndSession(t *testing.T) {
	s := newStack(t)
	ctx := chrome(t)
	b := steps{t, ctx, s}
	run, text, wait := b.run, b.text, b.wait
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	run("sign up",
		chromedp.Navigate(s.url+"/signup"),
		chromedp.WaitVisible(css(`#password2`)),
		chromedp.SendKeys(css(`#email`), "inspect@example.com"),
		chromedp.SendKeys(css(`#password`), "correct horse battery"),
		chromedp.SendKeys(css(`#password2`), "correct horse battery"),
		chromedp.Submit(css(`#password2`)),
		chromedp.WaitVisible(css(`#slug`)),
		chromedp.SendKeys(css(`#slug`), "acme"),
		chromedp.Submit(css(`#slug`)),
		chromedp.WaitNotPresent(css(`#slug`)), // off the tenants page, whose form has a #name too
		chromedp.WaitVisible(css(`#name`)),
		chromedp.SendKeys(css(`#name`), "sensor-1"),
		chromedp.Submit(css(`#name`)),
		chromedp.WaitVisible(css(`#cred-secret`)),
	)
	secret := text(`#cred-secret`)
	for _, m := range []dataplane.Message{
		{Topic: "lights/kitchen", Payload: []byte("on"), Retain: true},
		{Topic: "doors/front", Payload: []byte("shut"), Retain: true},
	} {
		if err := s.hub.Publish(context.Background(), "acme", m); err != nil {
			t.Fatal(err)
		}
	}
	run("open the retained page",
		chromedp.Navigate(s.url+"/tenants/acme/retained"),
		chromedp.WaitVisible(css(`#retained`)),
	)
	if rows := text(`#retained`); !strings.Contains(rows, "lights/kitchen") || !strings.Contains(rows, "doors/front") {
		t.Fatalf("retained rows: %q", rows)
	}
	// Navigate waits for the filtered page to load; a Submit would leave
	// the old page's #retained table in view while the new one loads.
	run("filter", chromedp.Navigate(s.url+"/tenants/acme/retained?filter=lights%2F%23"), chromedp.WaitVisible(css(`#retained`)))
	if rows := text(`#retained`); !strings.Contains(rows, "lights/kitchen") || strings.Contains(rows, "doors/front") {
		t.Fatalf("rows under lights/#: %q", rows)
	}
	screenshot(t, ctx, "retained-filtered")
	b.acceptConfirms()
	run("delete lights/kitchen",
		chromedp.Click(css(`button[aria-label="Delete lights/kitchen"]`)),
		chromedp.WaitVisible(css(`.flash`)),
	)
	if _, err := s.hub.RetainedMessage(context.Background(), "acme", "lights/kitchen"); err == nil {
		t.Error("lights/kitchen is still retained after the delete")
	}

	conn, err := net.Dial("tcp", s.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	dev := paho.NewClient(paho.ClientConfig{Conn: conn})
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dev.Connect(cctx, &paho.Connect{ClientID: "sensor-1", KeepAlive: 30, CleanStart: false, Username: "acme/sensor-1", UsernameFlag: true,
		Password: []byte(secret), PasswordFlag: true, Properties: &paho.ConnectProperties{SessionExpiryInterval: paho.Uint32(3600)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "commands/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	run("open the device page", chromedp.Navigate(s.url+"/tenants/acme/devices/sensor-1"), chromedp.WaitVisible(css(`#session-sensor-1`)))
	if sess := text(`#session-sensor-1`); !strings.Contains(sess, "commands/#") || !strings.Contains(sess, "connected") {
		t.Errorf("session section: %q", sess)
	}
	screenshot(t, ctx, "device-session")
	dev.Disconnect(&paho.Disconnect{})
	if err := s.hub.Publish(context.Background(), "acme", dataplane.Message{Topic: "commands/reboot", Payload: []byte("now"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		run("reload the device page", chromedp.Navigate(s.url+"/tenants/acme/devices/sensor-1"), chromedp.WaitVisible(css(`#session-sensor-1`)))
		if strings.Contains(text(`#session-sensor-1`), "Queue: 1 message") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queued message does not show: %q", text(`#session-sensor-1`))
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.acceptConfirms()
	run("purge", chromedp.Click(css(`form[action$="/queue/purge"] button`)), chromedp.WaitVisible(css(`.flash`)))
	wait("the queue empty", `document.getElementById("session-sensor-1").textContent.includes("Queue: 0 messages")`)
}

// acceptConfirms answers yes to the page's confirmations from now on.
func (b steps) acceptConfirms() {
	b.t.Helper()
	sctx, cancel := b.step()
	defer cancel()
	if _, err := chromedp.Run(sctx, chromedp.Evaluate[bool](`window.confirm = () => true, true`)); err != nil {
		b.t.Fatal(err)
	}
}
