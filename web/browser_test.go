package web_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/internal/testenv"
)

// chrome starts headless Chromium (Debian's chromium; as root it needs
// --no-sandbox) and returns a browser context.
func chrome(t *testing.T) context.Context {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		testenv.Require(t, "chromium is not installed (apt-get install chromium); the browser tests need it")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1280, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	// The first call starts the browser, for as long as ctx lives: no
	// timeout on it; each step below has its own.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// steps are a browser test's actions, each with its own time limit, failing
// the test with the console's log.
type steps struct {
	t   *testing.T
	ctx context.Context
	s   *stack
}

func (b steps) step() (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.ctx, 20*time.Second)
}

// run does actions, failing the test with what they were for.
func (b steps) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	sctx, cancel := b.step()
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		b.t.Fatalf("%s: %v\nconsole log:\n%s", what, err, b.s.logs)
	}
}

// text reads the text of the element sel selects.
func (b steps) text(sel string) string {
	b.t.Helper()
	sctx, cancel := b.step()
	defer cancel()
	v, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("read %s: %v", sel, err)
	}
	return v
}

// wait polls a JavaScript predicate until it holds.
func (b steps) wait(what, predicate string) {
	b.t.Helper()
	sctx, cancel := b.step()
	defer cancel()
	if _, err := chromedp.Run(sctx, chromedp.Poll[bool](predicate, chromedp.WithPollingTimeout(15*time.Second))); err != nil {
		b.t.Fatalf("%s: %v\nconsole log:\n%s", what, err, b.s.logs)
	}
}

// screenshots go to $ROOST_TEST_ARTIFACTS (default: artifacts/screenshots
// at the repository's root, which git ignores).
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("ROOST_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "artifacts")
	}
	dir = filepath.Join(dir, "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBrowserFirstMessage is the two-minute path in a real browser: sign
// up, create a tenant and a device, read its credentials from the page,
// connect a real MQTT client with them and publish, and see the message in
// the live viewer. Then an ACL rule and the checker, and an API key made
// and revoked.
func TestBrowserFirstMessage(t *testing.T) {
	s := newStack(t)
	ctx := chrome(t)
	b := steps{t, ctx, s}
	step, run, text := b.step, b.run, b.text
	wait := b.wait
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	run("sign up",
		chromedp.Navigate(s.url+"/"),
		chromedp.WaitVisible(css(`a[href="/signup"]`)),
		chromedp.Click(css(`a[href="/signup"]`)),
		chromedp.WaitVisible(css(`#password2`)),
		chromedp.SendKeys(css(`#email`), "first@example.com"),
		chromedp.SendKeys(css(`#password`), "correct horse battery"),
		chromedp.SendKeys(css(`#password2`), "correct horse battery"),
	)
	screenshot(t, ctx, "01-signup")
	run("submit sign-up", chromedp.Submit(css(`#password2`)), chromedp.WaitVisible(css(`#slug`)))
	screenshot(t, ctx, "02-tenants-empty")
	run("create tenant",
		chromedp.SendKeys(css(`#slug`), "acme"),
		chromedp.SendKeys(css(`#name`), "Acme Sensors"),
		chromedp.Submit(css(`#slug`)),
		chromedp.WaitNotPresent(css(`#slug`)), // off the tenants page, whose form has a #name too
		chromedp.WaitVisible(css(`#name`)),
	)
	screenshot(t, ctx, "03-devices-empty")
	run("create device",
		chromedp.SendKeys(css(`#name`), "sensor-1"),
		chromedp.Submit(css(`#name`)),
		chromedp.WaitVisible(css(`#cred-secret`)),
	)
	user, secret := text(`#cred-user`), text(`#cred-secret`)
	screenshot(t, ctx, "04-device-credentials")
	if user != "acme/sensor-1" || len(secret) < 20 {
		t.Fatalf("credentials on the page: %q %q", user, secret)
	}

	run("open the live viewer", chromedp.Navigate(s.url+"/tenants/acme/live"))
	wait("the live viewer to watch", `document.getElementById("live-status").textContent.startsWith("Watching")`)
	// A real device, with the credentials the page showed.
	conn, err := net.Dial("tcp", s.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	dev := paho.NewClient(paho.ClientConfig{Conn: conn})
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ca, err := dev.Connect(cctx, &paho.Connect{ClientID: "sensor-1", KeepAlive: 30, CleanStart: true, Username: user, UsernameFlag: true,
		Password: []byte(secret), PasswordFlag: true}); err != nil {
		t.Fatalf("the device could not connect with the page's credentials: %v %+v", err, ca)
	}
	defer dev.Disconnect(&paho.Disconnect{})
	if _, err := dev.Publish(cctx, &paho.Publish{Topic: "telemetry/sensor-1", QoS: 1, Payload: []byte("21.5 °C from the first device")}); err != nil {
		t.Fatal(err)
	}
	wait("the message in the live viewer", `document.getElementById("live-rows").textContent.includes("21.5 °C from the first device")`)
	if rows := text(`#live-rows`); !strings.Contains(rows, "telemetry/sensor-1") {
		t.Errorf("live rows: %q", rows)
	}
	screenshot(t, ctx, "05-live-message")

	// The test publisher reaches the device.
	got := make(chan string, 1)
	dev.AddOnPublishReceived(func(pr paho.PublishReceived) (bool, error) {
		got <- string(pr.Packet.Payload)
		return true, nil
	})
	if _, err := dev.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "commands/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	run("publish a test message",
		chromedp.SetValue(css(`#pub-topic`), "commands/sensor-1"),
		chromedp.SetValue(css(`#pub-payload`), "reboot"),
		chromedp.Click(css(`#publish-form button[type=submit]`)),
	)
	wait("the publish to be confirmed", `document.getElementById("publish-result").textContent === "Published."`)
	select {
	case p := <-got:
		if p != "reboot" {
			t.Errorf("the device got %q", p)
		}
	case <-time.After(10 * time.Second):
		t.Error("the console's test message did not reach the device")
	}

	// ACL: deny publishing to secret/# first; the checker says so.
	run("add a rule",
		chromedp.Navigate(s.url+"/tenants/acme/acl"),
		chromedp.WaitVisible(css(`#add-rule`)),
		chromedp.SetValue(css(`#effect`), "deny"),
		chromedp.SetValue(css(`#action`), "publish"),
		chromedp.SendKeys(css(`#topic`), "secret/#"),
		chromedp.SendKeys(css(`#position`), "0"),
		chromedp.Submit(css(`#topic`)),
		chromedp.WaitVisible(css(`.flash`)),
		chromedp.SendKeys(css(`#check_device`), "sensor-1"),
		chromedp.SetValue(css(`#check_action`), "publish"),
		chromedp.SendKeys(css(`#check_topic`), "secret/plans"),
		chromedp.Submit(css(`#check_topic`)),
		chromedp.WaitVisible(css(`#verdict`)),
	)
	verdict := text(`#verdict`)
	screenshot(t, ctx, "06-acl-checker")
	if !strings.HasPrefix(verdict, "Denied") || !strings.Contains(verdict, "by the rule at position 0") {
		t.Errorf("checker verdict: %q", verdict)
	}
	rules, _ := s.store.ACLRules(t.Context(), "acme")
	if len(rules) != 2 || rules[0].Topic != "secret/#" || rules[0].Effect != "deny" {
		t.Fatalf("rules after the edit: %+v", rules)
	}
	// The rule applies to the connected device at once.
	if pr, err := dev.Publish(cctx, &paho.Publish{Topic: "secret/plans", QoS: 1, Payload: []byte("x")}); err == nil && pr.ReasonCode < 0x80 {
		t.Errorf("a publish the new rule denies was accepted: %+v", pr)
	}
	run("move the rule down", chromedp.Click(css(`button[aria-label="Move the rule at position 0 down"]`)), chromedp.WaitVisible(css(`.flash`)))
	if rules, _ := s.store.ACLRules(t.Context(), "acme"); rules[1].Topic != "secret/#" {
		t.Errorf("after moving down: %+v", rules)
	}

	// API keys: create (shown once), revoke.
	run("create an API key",
		chromedp.Navigate(s.url+"/tenants/acme/api-keys"),
		chromedp.WaitVisible(css(`#key-name`)),
		chromedp.SendKeys(css(`#key-name`), "ci"),
		chromedp.Submit(css(`#key-name`)),
		chromedp.WaitVisible(css(`#new-key`)),
	)
	key := text(`#new-key`)
	screenshot(t, ctx, "07-api-key")
	if _, err := s.store.AuthenticateAPIKey(t.Context(), key); err != nil {
		t.Fatalf("the key on the page does not work: %q %v", key, err)
	}
	sctx, cancel := step()
	if _, err := chromedp.Run(sctx, chromedp.Evaluate[bool](`window.confirm = () => true, true`)); err != nil {
		t.Fatal(err)
	}
	cancel()
	run("revoke it",
		chromedp.Click(css(`button[aria-label="Revoke ci"]`)),
		chromedp.WaitVisible(css(`.flash`)),
	)
	if _, err := s.store.AuthenticateAPIKey(t.Context(), key); err == nil {
		t.Error("the revoked key still works")
	}
	for _, p := range []string{"", "/devices", "/usage", "/events", "/billing"} {
		run("open "+p, chromedp.Navigate(s.url+"/tenants/acme"+p), chromedp.WaitVisible(css(`main h1`)))
		screenshot(t, ctx, "08-page"+strings.ReplaceAll(p, "/", "-"))
	}

	// At phone width the pages fit: no sideways scrolling of the page itself
	// (wide tables scroll inside their own box).
	run("phone width", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	for _, p := range []string{"/devices", "/acl", "/live", "/usage", "/api-keys"} {
		run("open "+p+" on a phone", chromedp.Navigate(s.url+"/tenants/acme"+p), chromedp.WaitVisible(css(`main h1`)))
		wait(p+" fits a phone's width", `document.documentElement.scrollWidth <= window.innerWidth + 1`)
		screenshot(t, ctx, "09-phone"+strings.ReplaceAll(p, "/", "-"))
	}
}
