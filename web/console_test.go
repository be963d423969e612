package web_test

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/roosthub/roost/billing"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/web"
)

// routes lists the console's routes with their methods.
func routes(t *testing.T, s *stack) [][2]string {
	t.Helper()
	var out [][2]string
	err := chi.Walk(s.console.Router(), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		out = append(out, [2]string{method, route})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var param = regexp.MustCompile(`\{(\w+)\}`)

func fill(route string, ids map[string]string) string {
	route = strings.TrimSuffix(strings.ReplaceAll(route, "/*", "/"), "/")
	if route == "" {
		route = "/"
	}
	return param.ReplaceAllStringFunc(route, func(m string) string { return url.PathEscape(ids[m[1:len(m)-1]]) })
}

// TestEveryFormNeedsCSRF: every POST of the console, sent by a signed-in
// member without a token or with a wrong one, is refused 403 and changes
// nothing.
func TestEveryFormNeedsCSRF(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.device("acme", "d1", "")
	ids := map[string]string{"tenant": "acme", "device": "d1", "id": "x", "account": "y"}
	posts := 0
	for _, r := range routes(t, s) {
		if r[0] != http.MethodPost {
			continue
		}
		posts++
		path := fill(r[1], ids)
		for _, token := range []string{"", "forged", b.csrf + "x"} {
			form := url.Values{"csrf": {token}, "name": {"d2"}, "slug": {"other"}, "topic": {"#"}, "effect": {"allow"}, "action": {"all"}}
			if a := b.post(path, form); a.status != http.StatusForbidden {
				t.Errorf("POST %s with token %q: %d, want 403", path, token, a.status)
			}
		}
	}
	if posts < 25 {
		t.Errorf("walked only %d POST routes", posts)
	}
	// Nothing happened: no second device, no second tenant.
	if ds, _, _ := s.store.Devices(t.Context(), "acme", tenantsPage()); len(ds) != 1 {
		t.Errorf("devices after refused forms: %d", len(ds))
	}
	// And a valid token does work, from another page's form too.
	b.get("/tenants/acme/devices")
	if a := b.post("/tenants/acme/devices", url.Values{"name": {"d2"}}); a.status != http.StatusSeeOther {
		t.Errorf("create with a valid token: %d", a.status)
	}
	// A token is bound to its cookie: another visitor's token does not fit.
	other := s.browser()
	other.get("/login")
	b.csrf = other.csrf
	if a := b.post("/tenants/acme/devices", url.Values{"name": {"d3"}}); a.status != http.StatusForbidden {
		t.Errorf("another visitor's token: %d, want 403", a.status)
	}
}

// TestMarkupIsInert: names and metadata holding markup render as text.
func TestMarkupIsInert(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.get("/tenants")
	if a := b.post("/tenants", url.Values{"slug": {"acme"}, "name": {`<script>alert("t")</script>`}}); a.status != http.StatusSeeOther {
		t.Fatalf("tenant: %d %s", a.status, a.body)
	}
	b.device("acme", "d1", `note=<script>alert("m")</script>`+"\n"+`<img src=x onerror=alert(1)>=y`)
	if a := b.post("/tenants/acme/devices", url.Values{"name": {`<script>x</script>`}}); a.status != http.StatusBadRequest || strings.Contains(a.body, "<script>x") {
		t.Errorf("a device named with markup: %d, body has it raw: %v", a.status, strings.Contains(a.body, "<script>x"))
	}
	b.post("/tenants/acme/acl", url.Values{"effect": {"allow"}, "action": {"all"}, "topic": {`a/<script>/#`}, "device": {"*"}})
	for _, p := range []string{"/tenants/acme", "/tenants/acme/devices", "/tenants/acme/devices/d1", "/tenants/acme/acl", "/tenants"} {
		a := b.get(p)
		if a.status != http.StatusOK {
			t.Fatalf("%s: %d", p, a.status)
		}
		for _, raw := range []string{`<script>alert`, `<img src=x`, `<script>/#`} {
			if strings.Contains(a.body, raw) {
				t.Errorf("%s renders %q as markup", p, raw)
			}
		}
	}
	if a := b.get("/tenants/acme/devices/d1"); !strings.Contains(a.body, "&lt;script&gt;alert(&#34;m&#34;)&lt;/script&gt;") {
		t.Errorf("the metadata is not shown escaped:\n%s", a.body)
	}
}

// TestTenantsApart: a member of tenant B reaches none of tenant A's pages
// or forms (404, as for a tenant that does not exist), and A's data does
// not appear on B's pages.
func TestTenantsApart(t *testing.T) {
	s := newStack(t)
	alice, bob := s.browser(), s.browser()
	alice.signup("alice")
	alice.tenant("tenant-a")
	alice.device("tenant-a", "a-dev", "secret=alpha-metadata")
	bob.signup("bob")
	bob.tenant("tenant-b")
	bob.device("tenant-b", "b-dev", "")
	rules, _ := s.store.ACLRules(t.Context(), "tenant-a")
	keys := alice.post("/tenants/tenant-a/api-keys", url.Values{"name": {"k"}, "role": {"viewer"}})
	if keys.status != http.StatusCreated {
		t.Fatalf("key: %d", keys.status)
	}
	for _, r := range routes(t, s) {
		if !strings.Contains(r[1], "{tenant}") || strings.HasPrefix(r[1], "/admin/") {
			continue // the operator's pages: TestOperatorPages
		}
		for _, ids := range []map[string]string{
			{"tenant": "tenant-a", "device": "a-dev", "id": rules[0].ID, "account": "x"},
			{"tenant": "tenant-b", "device": "a-dev", "id": rules[0].ID, "account": "x"},
		} {
			path := fill(r[1], ids)
			var a answer
			if r[0] == http.MethodGet {
				a = bob.get(path)
			} else {
				a = bob.post(path, url.Values{"name": {"x"}, "topic": {"#"}, "position": {"0"}, "enabled": {"false"}, "plan": {"pro"}})
			}
			if ids["tenant"] == "tenant-a" && a.status != http.StatusNotFound {
				t.Errorf("bob %s %s: %d, want 404", r[0], path, a.status)
			}
			if strings.Contains(a.body, "alpha-metadata") || strings.Contains(a.body, "a-dev\"") {
				t.Errorf("bob %s %s shows tenant A's data", r[0], path)
			}
		}
	}
	// Still there, untouched.
	if d, err := s.store.Device(t.Context(), "tenant-a", "a-dev"); err != nil || !d.Enabled {
		t.Errorf("A's device after bob's attempts: %+v %v", d, err)
	}
	if rs, _ := s.store.ACLRules(t.Context(), "tenant-a"); len(rs) != 1 {
		t.Errorf("A's rules after bob's attempts: %d", len(rs))
	}
	// Bob's switcher lists only his tenant.
	if a := bob.get("/tenants"); strings.Contains(a.body, "tenant-a") {
		t.Error("bob's tenant list shows tenant-a")
	}
}

// TestSignInOut: pages need a session; login goes back where it was asked;
// a wrong password is said next to the field; logout ends the session;
// cookies are HttpOnly and SameSite; every page carries the CSP.
func TestSignInOut(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	if a := b.get("/tenants"); a.status != http.StatusSeeOther || !strings.HasPrefix(a.location, "/login?next=") {
		t.Fatalf("signed out: %d %s", a.status, a.location)
	}
	email := b.signup("ada")
	if a := b.get("/tenants"); a.status != http.StatusOK || !strings.Contains(a.body, "You have no tenant yet") {
		t.Errorf("tenants after sign-up: %d", a.status)
	}
	if a := b.get("/tenants"); !strings.Contains(a.header.Get("Content-Security-Policy"), "script-src 'self'") || a.header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("security headers: %v", a.header)
	}
	b.post("/logout", nil)
	if a := b.get("/tenants"); a.status != http.StatusSeeOther {
		t.Errorf("after logout: %d", a.status)
	}
	b.get("/login")
	a := b.post("/login", url.Values{"email": {email}, "password": {"wrong password!"}})
	if a.status != http.StatusUnauthorized || !strings.Contains(a.body, `class="field-error"`) || !strings.Contains(a.body, "Wrong email or password") {
		t.Errorf("wrong password: %d", a.status)
	}
	a = b.post("/login", url.Values{"email": {email}, "password": {"correct horse battery"}, "next": {"/tenants?x=1"}})
	if a.status != http.StatusSeeOther || a.location != "/tenants?x=1" {
		t.Errorf("login: %d %q", a.status, a.location)
	}
	a = b.post("/login", url.Values{"email": {email}, "password": {"correct horse battery"}, "next": {"//evil.example/"}})
	if a.location != "/" {
		t.Errorf("login to another site: %q", a.location)
	}
	resp, err := b.http.PostForm(s.url+"/login", url.Values{"csrf": {b.csrf}, "email": {email}, "password": {"correct horse battery"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == "roost_session" && (!c.HttpOnly || c.SameSite != http.SameSiteLaxMode) {
			t.Errorf("session cookie: %+v", c)
		}
	}
}

// TestPagesAreSmall: every page of a tenant with a device is under 100 KB.
func TestPagesAreSmall(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.device("acme", "d1", "")
	for _, p := range []string{"/tenants", "/tenants/acme", "/tenants/acme/devices", "/tenants/acme/devices/d1", "/tenants/acme/acl",
		"/tenants/acme/webhooks", "/tenants/acme/live", "/tenants/acme/usage", "/tenants/acme/usage?granularity=day", "/tenants/acme/events",
		"/tenants/acme/api-keys", "/tenants/acme/members", "/tenants/acme/billing", "/tenants/acme/settings", "/static/app.css", "/static/app.js"} {
		a := b.get(p)
		if a.status != http.StatusOK || len(a.body) > 100_000 {
			t.Errorf("%s: %d, %d bytes", p, a.status, len(a.body))
		}
	}
}

// TestOperatorPages: the operator token opens /admin; the operator
// suspends a tenant and sets overrides; a wrong token is refused.
func TestOperatorPages(t *testing.T) {
	s := newStack(t)
	owner := s.browser()
	owner.signup("owner")
	owner.tenant("acme")
	op := s.browser()
	if a := op.get("/admin"); a.status != http.StatusSeeOther || a.location != "/admin/login" {
		t.Fatalf("admin signed out: %d %s", a.status, a.location)
	}
	op.get("/admin/login")
	if a := op.post("/admin/login", url.Values{"token": {"rop_wrong-token-000000"}}); a.status != http.StatusUnauthorized {
		t.Errorf("wrong operator token: %d", a.status)
	}
	if a := op.post("/admin/login", url.Values{"token": {operatorToken}}); a.status != http.StatusSeeOther {
		t.Fatalf("operator login: %d", a.status)
	}
	if a := op.get("/admin"); a.status != http.StatusOK || !strings.Contains(a.body, "acme") || strings.Contains(a.body, "Data-plane nodes") {
		t.Fatalf("admin page (one process, no fleet): %d", a.status)
	}
	// A fleet: its nodes, with the tenants at home on each.
	for _, n := range []string{"node-a", "node-b"} {
		if err := s.store.AnnounceNode(t.Context(), tenants.Node{ID: n, URL: "http://" + n + ":8080", ForwardAddr: n + ":1884"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.store.ClaimTenant(t.Context(), "acme", "node-b", time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	s.store.DrainNode(t.Context(), "node-a")
	a := op.get("/admin")
	for _, want := range []string{"Data-plane nodes", "<td>node-a</td><td>http://node-a:8080</td><td>0</td><td><span class=\"off\">draining</span>", "<td>node-b</td><td>http://node-b:8080</td><td>1</td><td>up"} {
		if !strings.Contains(a.body, want) {
			t.Errorf("the operator page lacks %q", want)
		}
	}
	a = op.post("/admin/tenants/acme", url.Values{"plan": {"pro"}, "suspended": {"on"}, "overrides": {"max_devices=7\nconnect_rate=50"}})
	if a.status != http.StatusSeeOther {
		t.Fatalf("operator update: %d %s", a.status, a.body)
	}
	tn, _ := s.store.Tenant(t.Context(), "acme")
	if tn.Plan != "pro" || !tn.Suspended || tn.Overrides["max_devices"] != 7 || tn.Overrides["connect_rate"] != 50 {
		t.Errorf("after the operator's update: %+v", tn)
	}
	if a := op.post("/admin/tenants/acme", url.Values{"plan": {"pro"}, "overrides": {"max_widgets=1"}}); a.status != http.StatusBadRequest || !strings.Contains(a.body, "unknown quota") {
		t.Errorf("unknown quota: %d", a.status)
	}
	if a := owner.get("/admin"); a.status != http.StatusSeeOther {
		t.Errorf("a tenant owner on /admin: %d", a.status)
	}
}

// TestSnippetsWork: the mosquitto_pub and mosquitto_sub commands on a new
// device's page, run as written, publish into the tenant and receive from
// it.
func TestSnippetsWork(t *testing.T) {
	for _, tool := range []string{"bash", "mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Require(t, tool+" is not installed (apt-get install mosquitto-clients)")
		}
	}
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	a := b.get(b.post("/tenants/acme/devices", url.Values{"name": {"d1"}}).location)
	snippet := func(id string) string {
		m := regexp.MustCompile(`id="snip-` + id + `">([^<]+)<`).FindStringSubmatch(a.body)
		if m == nil {
			t.Fatalf("no %s snippet", id)
		}
		return html.UnescapeString(m[1])
	}
	got := make(chan dataplane.Message, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.hub.Watch(ctx, "acme", "alice", "#", func(m dataplane.Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "-c", snippet("pub")).CombinedOutput(); err != nil {
		t.Fatalf("the mosquitto_pub snippet failed: %v\n%s", err, out)
	}
	select {
	case m := <-got:
		if m.Topic != "telemetry/d1" || string(m.Payload) != "hello from d1" {
			t.Errorf("published %s %q", m.Topic, m.Payload)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the snippet's message did not arrive")
	}
	// Retained, so that it waits for the subscription, however late.
	if err := s.hub.Publish(context.Background(), "acme", dataplane.Message{Topic: "commands/d1", Payload: []byte("reboot"), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	sub := exec.Command("bash", "-c", snippet("sub")+" -C 1 -W 15")
	var out strings.Builder
	sub.Stdout, sub.Stderr = &out, &out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Wait(); err != nil || strings.TrimSpace(out.String()) != "commands/d1 reboot" {
		t.Errorf("the mosquitto_sub snippet: %v %q", err, out.String())
	}
}

// TestDeviceKeysAndCertificates: a bad key is refused next to its field; a
// pinned fingerprint is listed and can be unpinned.
func TestDeviceKeysAndCertificates(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.device("acme", "d1", "")
	b.get("/tenants/acme/devices/d1")
	a := b.post("/tenants/acme/devices/d1/keys", url.Values{"public_key": {"not a key"}})
	if a.status != http.StatusBadRequest || !strings.Contains(a.body, `class="field-error"`) || !strings.Contains(a.body, "not a key") {
		t.Errorf("a bad key: %d", a.status)
	}
	fp := strings.Repeat("ab", 32)
	if a := b.post("/tenants/acme/devices/d1/certificates", url.Values{"certificate": {fp}}); a.status != http.StatusSeeOther {
		t.Fatalf("pin a fingerprint: %d %s", a.status, a.body)
	}
	certs, _ := s.store.DeviceCertificates(t.Context(), "acme", "d1")
	if len(certs) != 1 || certs[0].Fingerprint != fp {
		t.Fatalf("pinned: %+v", certs)
	}
	if a := b.get("/tenants/acme/devices/d1"); !strings.Contains(a.body, fp) {
		t.Error("the device page does not list the pinned fingerprint")
	}
	if a := b.post("/tenants/acme/devices/d1/certificates/"+certs[0].ID+"/delete", nil); a.status != http.StatusSeeOther {
		t.Errorf("unpin: %d", a.status)
	}
	if certs, _ := s.store.DeviceCertificates(t.Context(), "acme", "d1"); len(certs) != 0 {
		t.Errorf("after unpinning: %+v", certs)
	}
}

var (
	controlRE = regexp.MustCompile(`<(input|select|textarea)\b[^>]*>`)
	idRE      = regexp.MustCompile(`\bid="([^"]+)"`)
)

// TestControlsAreLabelled: every visible form control of every page has a
// label (for its id, around it, or aria-label).
func TestControlsAreLabelled(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.device("acme", "d1", "")
	op := s.browser()
	op.get("/admin/login")
	op.post("/admin/login", url.Values{"token": {operatorToken}})
	// A destination of each type, for their own pages.
	b.post("/tenants/acme/webhooks", url.Values{"name": {"hook"}, "type": {"webhook"}, "url": {"http://127.0.0.1:1/hook"}, "headers": {"X-Key: k"}})
	b.post("/tenants/acme/webhooks", url.Values{"name": {"plant"}, "type": {"kafka"}, "brokers": {"127.0.0.1:1"}, "topic": {"t"}})
	ds, err := s.store.Destinations(t.Context(), "acme")
	if err != nil || len(ds) != 2 {
		t.Fatalf("destinations: %d, %v", len(ds), err)
	}
	pages := map[*browser][]string{
		b: {"/tenants", "/tenants/acme", "/tenants/acme/devices", "/tenants/acme/devices/d1", "/tenants/acme/acl",
			"/tenants/acme/webhooks", "/tenants/acme/webhooks/" + ds[0].ID, "/tenants/acme/webhooks/" + ds[1].ID,
			"/tenants/acme/live", "/tenants/acme/usage", "/tenants/acme/events", "/tenants/acme/api-keys",
			"/tenants/acme/members", "/tenants/acme/billing", "/tenants/acme/settings"},
		s.browser(): {"/login", "/signup", "/admin/login"},
		op:          {"/admin"},
	}
	checked := 0
	for br, paths := range pages {
		for _, p := range paths {
			body := br.get(p).body
			for _, ctl := range controlRE.FindAllString(body, -1) {
				if strings.Contains(ctl, `type="hidden"`) || strings.Contains(ctl, "aria-label=") {
					continue
				}
				checked++
				id := idRE.FindStringSubmatch(ctl)
				wrapped := regexp.MustCompile(`<label[^>]*>[^<]*` + regexp.QuoteMeta(ctl)).MatchString(body)
				if !wrapped && (id == nil || !strings.Contains(body, `for="`+id[1]+`"`)) {
					t.Errorf("%s: unlabelled control %s", p, ctl)
				}
			}
		}
	}
	if checked < 30 {
		t.Errorf("checked only %d controls", checked)
	}
}

// TestBillingPages: with billing off the page says so and offers nothing;
// with it on (stripe-mock) an admin's upgrade button leads to Checkout, the
// portal button to the portal, a viewer sees no buttons and cannot post
// them, and the spend cap form saves.
func TestBillingPages(t *testing.T) {
	off := newStack(t)
	b := off.browser()
	b.signup("owner")
	b.tenant("acme")
	if a := b.get("/tenants/acme/billing"); !strings.Contains(a.body, "Billing is off") || strings.Contains(a.body, "Upgrade to") {
		t.Errorf("billing off: %d", a.status)
	}
	if a := b.post("/tenants/acme/billing/checkout", url.Values{"plan": {"pro"}}); a.status != http.StatusConflict {
		t.Errorf("checkout with billing off: %d", a.status)
	}
	// No card is ever asked for when nothing is billed: the login page
	// does not make a point of it.
	if a := off.browser().get("/login"); strings.Contains(a.body, "no card") {
		t.Errorf("billing off: the login page speaks of a card")
	}

	stripeURL := testenv.StripeURL(t)
	s := newStackWith(t, func(c *web.Config) {
		plans, err := tenants.LoadPlans(strings.NewReader("plans:\n  pro: {stripe_price: price_pro, stripe_metered_price: price_pro_m}\n"))
		if err != nil {
			t.Fatal(err)
		}
		c.Store.SetPlans(plans)
		c.Billing, err = billing.New(billing.Config{Store: c.Store, Stripe: billing.NewStripe("sk_test_123", stripeURL), WebhookSecret: "whsec_x"})
		if err != nil {
			t.Fatal(err)
		}
	})
	if a := s.browser().get("/login"); !strings.Contains(a.body, "the free plan needs no card") {
		t.Errorf("billing on: the login page does not say the free plan needs no card")
	}
	owner := s.browser()
	owner.signup("payer")
	owner.tenant("acme")
	if a := owner.get("/tenants/acme/billing"); !strings.Contains(a.body, "Upgrade to pro") {
		t.Fatalf("billing on: no upgrade button:\n%s", a.body)
	}
	a := owner.post("/tenants/acme/billing/checkout", url.Values{"plan": {"pro"}})
	if a.status != http.StatusSeeOther || !strings.HasPrefix(a.location, "https://") {
		t.Errorf("checkout: %d %q", a.status, a.location)
	}
	if a := owner.post("/tenants/acme/billing/portal", nil); a.status != http.StatusSeeOther || !strings.HasPrefix(a.location, "https://") {
		t.Errorf("portal: %d %q", a.status, a.location)
	}
	if a := owner.post("/tenants/acme/billing/cap", url.Values{"cap": {"12.50"}, "block": {"on"}}); a.status != http.StatusSeeOther {
		t.Errorf("spend cap: %d", a.status)
	}
	if tn, _ := s.store.Tenant(t.Context(), "acme"); tn.SpendCap == nil || tn.SpendCap.Cents != 1250 || !tn.SpendCap.Block {
		t.Errorf("spend cap saved: %+v", tn.SpendCap)
	}
	if a := owner.post("/tenants/acme/billing/cap", url.Values{"cap": {"lots"}}); a.status != http.StatusBadRequest {
		t.Errorf("a bad cap: %d", a.status)
	}

	viewer := s.browser()
	email := viewer.signup("viewer")
	owner.get("/tenants/acme/members")
	owner.post("/tenants/acme/members", url.Values{"email": {email}, "role": {"viewer"}})
	if a := viewer.get("/tenants/acme/billing"); a.status != http.StatusOK || strings.Contains(a.body, "Upgrade to") {
		t.Errorf("a viewer's billing page: %d, offers an upgrade: %v", a.status, strings.Contains(a.body, "Upgrade to"))
	}
	if a := viewer.post("/tenants/acme/billing/checkout", url.Values{"plan": {"pro"}}); a.status != http.StatusForbidden {
		t.Errorf("a viewer's checkout: %d", a.status)
	}
}

// refusingPlane is the hub with publishes refused, each with the error
// of the topic published to.
type refusingPlane struct {
	dataplane.DataPlane
	errs map[string]error
}

func (p refusingPlane) Publish(_ context.Context, _ string, m dataplane.Message) error {
	return p.errs[m.Topic]
}

// TestLivePublishRefused: a refused test publish is answered with the
// status the API's publish gives the same error (the one table of kinds),
// from the form and from the script, with Retry-After where the kind has
// one; an error of no kind is logged under an id and not shown.
func TestLivePublishRefused(t *testing.T) {
	cases := []struct {
		topic      string
		err        error
		status     int
		retryAfter string
	}{
		{"rate", &tenants.QuotaError{Quota: "publish_rate", Limit: 100}, http.StatusTooManyRequests, "1"},
		{"month", &tenants.QuotaError{Quota: "messages_per_month", Limit: 1_000_000}, http.StatusForbidden, ""},
		{"dollar", fmt.Errorf("a $ topic: %w", tenants.ErrForbidden), http.StatusForbidden, ""},
		{"draining", &tenants.RetryError{Kind: tenants.ErrUnavailable, After: 5 * time.Second, Msg: "the home drains"}, http.StatusServiceUnavailable, "5"},
		{"secret", errors.New("redis: secret-internal-detail"), http.StatusInternalServerError, ""},
	}
	errs := map[string]error{}
	for _, c := range cases {
		errs[c.topic] = c.err
	}
	s := newStackWith(t, func(cfg *web.Config) { cfg.DataPlane = refusingPlane{DataPlane: cfg.DataPlane, errs: errs} })
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.get("/tenants/acme/live")
	for _, c := range cases {
		form := b.post("/tenants/acme/live/publish", url.Values{"topic": {c.topic}, "payload": {"x"}})
		req, _ := http.NewRequest("POST", s.url+"/tenants/acme/live/publish", strings.NewReader(url.Values{"topic": {c.topic}, "csrf": {b.csrf}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-CSRF-Token", b.csrf)
		resp, err := b.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		script := b.read(resp)
		for from, a := range map[string]answer{"form": form, "script": script} {
			if a.status != c.status || a.header.Get("Retry-After") != c.retryAfter {
				t.Errorf("%s from the %s: %d, Retry-After %q; want %d, %q", c.err, from, a.status, a.header.Get("Retry-After"), c.status, c.retryAfter)
			}
			if strings.Contains(a.body, "secret-internal-detail") {
				t.Errorf("the %s shows an internal error: %s", from, a.body)
			}
		}
	}
	if !strings.Contains(s.logs.String(), "secret-internal-detail") {
		t.Error("the internal error is not in the log")
	}
}

// TestLivePublishInput: the test publisher refuses a bad QoS or topic next
// to its field and publishes nothing.
func TestLivePublishInput(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.get("/tenants/acme/live")
	for _, c := range []struct{ qos, topic, field string }{{"7", "a", "qos"}, {"one", "a", "qos"}, {"1", "a/+", "topic"}} {
		a := b.post("/tenants/acme/live/publish", url.Values{"topic": {c.topic}, "payload": {"x"}, "qos": {c.qos}})
		if a.status != http.StatusBadRequest || !strings.Contains(a.body, `class="field-error"`) {
			t.Errorf("qos %q topic %q: %d", c.qos, c.topic, a.status)
		}
	}
	if a := b.post("/tenants/acme/live/publish", url.Values{"topic": {"a"}, "payload": {"x"}}); a.status != http.StatusSeeOther {
		t.Errorf("a publish without a QoS (0): %d", a.status)
	}
}
