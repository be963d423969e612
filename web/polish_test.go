package web_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"html"
	"math/big"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// operator signs a browser in with the operator token.
func (s *stack) operator() *browser {
	s.t.Helper()
	op := s.browser()
	op.get("/admin/login")
	if a := op.post("/admin/login", url.Values{"token": {operatorToken}}); a.status != http.StatusSeeOther {
		s.t.Fatalf("operator login: %d", a.status)
	}
	return op
}

var adminRowRE = regexp.MustCompile(`<tr>\s*<td><a href="/admin/tenants/([a-z0-9-]+)">`)

// adminSlugs are the tenants of the operator's table, in its order.
func adminSlugs(body string) []string {
	var out []string
	for _, m := range adminRowRE.FindAllStringSubmatch(body, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestOperatorTable: the operator's page is a table for many tenants:
// 120 tenants come 50 to a page with the hub's totals, sort by any column
// both ways, and search by slug or name; each tenant's own page shows its
// quotas by name with their keys, and a mistake in one comes back to that
// page with the message.
func TestOperatorTable(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	acct, err := s.store.CreateAccount(ctx, tenants.Signup{Email: "many@example.com", Password: "correct horse battery"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 120 {
		if _, err := s.store.CreateTenant(ctx, acct.ID, tenants.TenantInput{Slug: fmt.Sprintf("t-%03d", i), Name: fmt.Sprintf("Tenant %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if _, _, err := s.store.CreateDevice(ctx, "t-007", tenants.DeviceInput{Name: fmt.Sprint("d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.store.CreateDevice(ctx, "t-042", tenants.DeviceInput{Name: "d0"}); err != nil {
		t.Fatal(err)
	}
	op := s.operator()

	a := op.get("/admin")
	if a.status != http.StatusOK {
		t.Fatalf("/admin: %d", a.status)
	}
	if got := adminSlugs(a.body); len(got) != 50 || got[0] != "t-000" || got[49] != "t-049" {
		t.Errorf("first page: %d rows %v, want t-000 to t-049", len(got), got)
	}
	for _, want := range []string{"<b>120</b> tenants", "<b>4</b> devices", "120 tenants, page 1 of 3", `rel="next"`} {
		if !strings.Contains(a.body, want) {
			t.Errorf("the first page lacks %q", want)
		}
	}
	if got := adminSlugs(op.get("/admin?page=3").body); len(got) != 20 || got[0] != "t-100" {
		t.Errorf("page 3: %d rows starting %v, want 20 from t-100", len(got), got)
	}
	if got := adminSlugs(op.get("/admin?sort=devices&dir=desc").body); len(got) < 2 || got[0] != "t-007" || got[1] != "t-042" {
		t.Errorf("by devices, most first: %v, want t-007 then t-042", got[:min(len(got), 3)])
	}
	if got := adminSlugs(op.get("/admin?sort=slug&dir=desc").body); len(got) == 0 || got[0] != "t-119" {
		t.Errorf("by slug, descending: starts %v, want t-119", got[:min(len(got), 1)])
	}
	a = op.get("/admin?q=Tenant+11")
	if got := adminSlugs(a.body); len(got) != 11 || got[0] != "t-011" {
		t.Errorf("search by name \"Tenant 11\": %v, want t-011 and t-110 to t-119", got)
	}
	if !strings.Contains(a.body, "11 tenants matching") {
		t.Errorf("the search does not say how many match")
	}
	if a := op.get("/admin?q=nothing-like-it"); !strings.Contains(a.body, "No tenant") {
		t.Errorf("a search that matches nothing says nothing")
	}

	// A tenant's own page: quotas by name, key beside, plan's value.
	a = op.get("/admin/tenants/t-007")
	for _, want := range []string{`<label for="q-max_devices">Devices</label></td><td><code>max_devices</code>`, "3 devices", `name="quota.messages_per_month"`} {
		if !strings.Contains(a.body, want) {
			t.Errorf("the tenant's page lacks %q", want)
		}
	}
	a = op.post("/admin/tenants/t-007", url.Values{"per_quota": {"1"}, "plan": {"free"}, "quota.max_devices": {"many"}})
	if a.status != http.StatusBadRequest || !strings.Contains(a.body, "Devices must be a whole number") || !strings.Contains(a.body, `id="admin-tenant"`) || !strings.Contains(a.body, `value="many"`) {
		t.Errorf("a bad override: %d, want 400 on the tenant's page with the message and the value sent", a.status)
	}
	a = op.post("/admin/tenants/t-007", url.Values{"per_quota": {"1"}, "plan": {"free"}, "quota.max_devices": {"1,500"}})
	if a.status != http.StatusSeeOther || a.location != "/admin/tenants/t-007?done=saved" {
		t.Fatalf("an override: %d %s", a.status, a.location)
	}
	if tn, _ := s.store.Tenant(ctx, "t-007"); tn.Overrides["max_devices"] != 1500 || len(tn.Overrides) != 1 {
		t.Errorf("overrides after saving: %v, want max_devices=1500", tn.Overrides)
	}
	op.post("/admin/tenants/t-007", url.Values{"per_quota": {"1"}, "plan": {"free"}, "quota.max_devices": {""}})
	if tn, _ := s.store.Tenant(ctx, "t-007"); len(tn.Overrides) != 0 {
		t.Errorf("an emptied override stays: %v", tn.Overrides)
	}
	if a := op.get("/admin/tenants/no-such"); a.status != http.StatusNotFound {
		t.Errorf("an unknown tenant's page: %d", a.status)
	}
}

// TestDeviceSecretShownOnce: creating a device or rotating its secret
// answers with a redirect; the page it leads to shows the secret once, and
// opened again (a refresh) it says the secret was shown and creates nothing.
func TestDeviceSecretShownOnce(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	secretRE := regexp.MustCompile(`id="cred-secret">([^<]+)<`)
	for _, tc := range []struct{ name, post, page string }{
		{"create", "/tenants/acme/devices", "/tenants/acme/devices/d1/created"},
		{"rotate", "/tenants/acme/devices/d1/secret", "/tenants/acme/devices/d1/secret"},
	} {
		a := b.post(tc.post, url.Values{"name": {"d1"}})
		if a.status != http.StatusSeeOther || a.location != tc.page {
			t.Fatalf("%s: %d %q, want 303 to %s", tc.name, a.status, a.location, tc.page)
		}
		first := b.get(a.location)
		m := secretRE.FindStringSubmatch(first.body)
		if first.status != http.StatusOK || m == nil {
			t.Fatalf("%s: the page after the redirect shows no secret: %d", tc.name, first.status)
		}
		if d, err := s.store.Device(t.Context(), "acme", "d1"); err != nil || !tenants.CheckSecret(html.UnescapeString(m[1]), d.SecretHash) {
			t.Errorf("%s: the secret shown is not the device's: %v", tc.name, err)
		}
		again := b.get(a.location)
		if secretRE.MatchString(again.body) || !strings.Contains(again.body, `id="secret-gone"`) {
			t.Errorf("%s: opened again, the page shows the secret or does not say it was shown", tc.name)
		}
	}
	if ds, _, _ := s.store.Devices(t.Context(), "acme", tenantsPage()); len(ds) != 1 {
		t.Errorf("devices: %d, want 1", len(ds))
	}
}

// TestQuotaNamesAndCounts: quotas read by name with their key beside,
// durations in words and sizes in bytes' units, and counts of one are
// singular. A label names no unit (the limit beside it gives its own:
// "Event history kept … limit 1 day"); the operator's page, which takes
// the bare number, names the unit it is in.
func TestQuotaNamesAndCounts(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.device("acme", "d1", "")
	if _, err := s.store.AddUsage(t.Context(), []tenants.UsageDelta{{Tenant: "acme", Hour: time.Now().UTC().Truncate(time.Hour),
		Usage: tenants.Usage{MessagesIn: 1, BytesIn: 5}}}); err != nil {
		t.Fatal(err)
	}
	a := b.get("/tenants/acme/usage")
	for _, want := range []string{"Devices <code>max_devices</code>", "Longest session expiry <code>max_session_expiry</code>\nlimit 7 days</span>",
		"Commands pending (waiting for a reply, or queued) <code>max_pending_commands</code>", "Longest keep-alive <code>max_keepalive</code>\nlimit 5 minutes</span>",
		"Event history kept <code>event_retention</code>\nlimit 1 day</span>", "Largest packet <code>max_packet_size</code>\nlimit ",
		"App streams open at once <code>max_streams</code>", "Largest device shadow <code>max_shadow_bytes</code>\nlimit 8.0 KiB per device</span>",
		"1 message in (5 B)"} {
		if !strings.Contains(a.body, want) {
			t.Errorf("the usage page lacks %q", want)
		}
	}
	// A label names no unit its value does not use: the value gives its own.
	for _, bad := range []string{"86,400", "1 messages", "<code>event_retention</code>\nlimit 86", "(seconds) <code>", "(bytes) <code>", "(bytes/s) <code>"} {
		if strings.Contains(a.body, bad) {
			t.Errorf("the usage page has %q", bad)
		}
	}
	if a := b.get("/tenants/acme"); !strings.Contains(a.body, "<b>1</b> device</a>") {
		t.Errorf("the overview does not say \"1 device\"")
	}
	// The operator types a bare number: its label names the unit.
	op := s.browser()
	op.get("/admin/login")
	if a := op.post("/admin/login", url.Values{"token": {operatorToken}}); a.status != http.StatusSeeOther {
		t.Fatalf("operator login: %d", a.status)
	}
	a = op.get("/admin/tenants/acme")
	for _, want := range []string{`>Event history kept (seconds)</label>`, `>Largest device shadow (bytes)</label>`, `>Devices</label>`} {
		if !strings.Contains(a.body, want) {
			t.Errorf("the operator's tenant page lacks %q", want)
		}
	}
}

// TestOnlyOwnerHasNoRemove: the members page offers no Remove (nor Leave)
// for a tenant's only owner; with a second owner both appear.
func TestOnlyOwnerHasNoRemove(t *testing.T) {
	s := newStack(t)
	owner, other := s.browser(), s.browser()
	ownerEmail, otherEmail := owner.signup("owner"), other.signup("other")
	owner.tenant("acme")
	owner.get("/tenants/acme/members")
	if a := owner.post("/tenants/acme/members", url.Values{"email": {otherEmail}, "role": {"admin"}}); a.status != http.StatusSeeOther {
		t.Fatalf("add a member: %d", a.status)
	}
	a := owner.get("/tenants/acme/members")
	if strings.Contains(a.body, `aria-label="Leave acme"`) || !strings.Contains(a.body, "the only owner: make another member owner to leave") {
		t.Errorf("the only owner's own row offers to leave, or does not say why not")
	}
	if !strings.Contains(a.body, `aria-label="Remove `+otherEmail+`"`) {
		t.Errorf("the owner is not offered to remove the admin")
	}
	if a := other.get("/tenants/acme/members"); strings.Contains(a.body, `aria-label="Remove `+ownerEmail+`"`) {
		t.Errorf("the admin is offered to remove the only owner")
	}
	// A second owner: each may now leave, and the owner may remove the other.
	third := s.browser()
	thirdEmail := third.signup("third")
	owner.get("/tenants/acme/members")
	if a := owner.post("/tenants/acme/members", url.Values{"email": {thirdEmail}, "role": {"owner"}}); a.status != http.StatusSeeOther {
		t.Fatalf("add an owner: %d", a.status)
	}
	otherEmail = thirdEmail
	a = owner.get("/tenants/acme/members")
	if !strings.Contains(a.body, `aria-label="Leave acme"`) || !strings.Contains(a.body, `aria-label="Remove `+otherEmail+`"`) || strings.Contains(a.body, "the only owner") {
		t.Errorf("with two owners the page still holds back Leave or Remove")
	}
}

// TestErrorPagesLeadBack: an error page links back to the page the visitor
// came from (a page of this console only), or to the nearest page that can
// show.
func TestErrorPagesLeadBack(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.get("/tenants/acme/acl")
	post := func(path, referer string) answer {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, s.url+path, strings.NewReader(url.Values{"csrf": {b.csrf}, "position": {"minus one"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if referer != "" {
			req.Header.Set("Referer", referer)
		}
		resp, err := b.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return b.read(resp)
	}
	back := regexp.MustCompile(`<a href="([^"]*)" id="error-back">`)
	for _, tc := range []struct{ name, referer, want string }{
		{"from the rules page", s.url + "/tenants/acme/acl?x=1", "/tenants/acme/acl?x=1"},
		{"from another site", "https://evil.example/phish", "/tenants/acme"},
		{"no referer", "", "/tenants/acme"},
	} {
		a := post("/tenants/acme/acl/acl_x/move", tc.referer)
		m := back.FindStringSubmatch(a.body)
		if a.status != http.StatusBadRequest || m == nil || html.UnescapeString(m[1]) != tc.want {
			t.Errorf("%s: %d, back link %v, want 400 leading to %s", tc.name, a.status, m, tc.want)
		}
	}
	if a := b.get("/tenants/acme/devices/nobody"); a.status != http.StatusNotFound || !back.MatchString(a.body) {
		t.Errorf("a missing device: %d, no way back", a.status)
	}
}

// TestRulePositionsAsTheAPI: the console numbers rules from 0, as the API
// does: a rule added at position 0 is the API's position 0 and shows so.
func TestRulePositionsAsTheAPI(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.get("/tenants/acme/acl")
	if a := b.post("/tenants/acme/acl", url.Values{"effect": {"deny"}, "action": {"publish"}, "topic": {"secret/#"}, "device": {"*"}, "position": {"0"}}); a.status != http.StatusSeeOther {
		t.Fatalf("add a rule at position 0: %d", a.status)
	}
	rules, _ := s.store.ACLRules(t.Context(), "acme")
	if len(rules) != 2 || rules[0].Topic != "secret/#" || rules[0].Position != 0 {
		t.Fatalf("rules: %+v, want secret/# at position 0", rules)
	}
	a := b.get("/tenants/acme/acl")
	if !strings.Contains(a.body, `<td>0</td><td class="deny">deny</td>`) || !strings.Contains(a.body, `aria-label="Move the rule at position 0 down"`) {
		t.Errorf("the rules page does not number the first rule 0")
	}
	b.device("acme", "d1", "")
	a = b.post("/tenants/acme/acl/check", url.Values{"device": {"d1"}, "action": {"publish"}, "topic": {"secret/x"}})
	if !strings.Contains(a.body, "by the rule at position 0") {
		t.Errorf("the checker does not name the rule by its API position")
	}
	if a := b.post("/tenants/acme/acl", url.Values{"effect": {"allow"}, "action": {"all"}, "topic": {"#"}, "device": {"*"}, "position": {"-1"}}); a.status != http.StatusBadRequest {
		t.Errorf("position -1: %d, want 400", a.status)
	}
}

// TestDeviceMetadataApart: a device's metadata has its own section, apart
// from its status.
func TestDeviceMetadataApart(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.device("acme", "d1", "room=lab")
	a := b.get("/tenants/acme/devices/d1")
	status, meta, ok := strings.Cut(a.body, "<h2>Metadata</h2>")
	if !ok || strings.Contains(status, "room") || !strings.Contains(meta, `<dl class="facts" id="metadata"><dt>room</dt><dd>lab</dd>`) {
		t.Errorf("the metadata is not in a section of its own")
	}
}

// caPEM is a new self-signed CA certificate, PEM.
func caPEM(t *testing.T, cn string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// TestCAsAndAuditPages: an admin registers and removes a tenant's
// certificate authorities on their page (a bad one, or another tenant's,
// comes back with the reason next to the field); a viewer sees them and
// changes nothing; the audit trail lists every change.
func TestCAsAndAuditPages(t *testing.T) {
	s := newStack(t)
	owner, viewer, other := s.browser(), s.browser(), s.browser()
	owner.signup("owner")
	viewerEmail := viewer.signup("viewer")
	other.signup("other")
	owner.tenant("acme")
	other.tenant("rival")
	owner.get("/tenants/acme/members")
	owner.post("/tenants/acme/members", url.Values{"email": {viewerEmail}, "role": {"viewer"}})
	ca := caPEM(t, "Acme devices CA")

	owner.get("/tenants/acme/cas")
	if a := owner.post("/tenants/acme/cas", url.Values{"certificate": {"not a certificate"}}); a.status != http.StatusBadRequest || !strings.Contains(a.body, `class="field-error"`) {
		t.Errorf("a bad certificate: %d, want 400 with the reason by the field", a.status)
	}
	if a := owner.post("/tenants/acme/cas", url.Values{"certificate": {ca}}); a.status != http.StatusSeeOther || a.location != "/tenants/acme/cas?done=saved" {
		t.Fatalf("add a CA: %d %s", a.status, a.location)
	}
	other.get("/tenants/rival/cas")
	if a := other.post("/tenants/rival/cas", url.Values{"certificate": {ca}}); a.status != http.StatusBadRequest || !strings.Contains(a.body, "belongs to another tenant") {
		t.Errorf("another tenant's CA: %d, want 400 saying whose it is", a.status)
	}
	cas, _ := s.store.CAs(t.Context(), "acme")
	if len(cas) != 1 {
		t.Fatalf("CAs: %d, want 1", len(cas))
	}
	a := viewer.get("/tenants/acme/cas")
	if !strings.Contains(a.body, "Acme devices CA") || strings.Contains(a.body, `id="add-ca"`) || strings.Contains(a.body, "aria-label=\"Remove") {
		t.Errorf("the viewer's CA page: lists it %v, offers changes %v", strings.Contains(a.body, "Acme devices CA"), strings.Contains(a.body, `id="add-ca"`))
	}
	if a := viewer.post("/tenants/acme/cas/"+cas[0].ID+"/delete", nil); a.status != http.StatusForbidden {
		t.Errorf("a viewer removes a CA: %d, want 403", a.status)
	}
	if a := owner.post("/tenants/acme/cas/"+cas[0].ID+"/delete", nil); a.status != http.StatusSeeOther {
		t.Errorf("remove the CA: %d", a.status)
	}
	if cas, _ := s.store.CAs(t.Context(), "acme"); len(cas) != 0 {
		t.Errorf("CAs after removing: %d", len(cas))
	}

	a = viewer.get("/tenants/acme/audit")
	for _, want := range []string{"tenant.create", "ca.create", "ca.delete", "UTC"} {
		if !strings.Contains(a.body, want) {
			t.Errorf("the audit trail lacks %q", want)
		}
	}
	if a := other.get("/tenants/acme/audit"); a.status != http.StatusNotFound {
		t.Errorf("another tenant's member on the audit trail: %d, want 404", a.status)
	}
}

// TestRuleFormsBudget: the console's forms that make rules compile them
// within the tenant's share of the process's CPU, as the API does: a
// condition and a projection of nested list literals take a tenth of a
// second or more to compile, and an admin posting them in a loop gets 429
// with Retry-After once the share is spent (before, it compiled on as
// many cores as it had connections).
func TestRuleFormsBudget(t *testing.T) {
	nested := strings.Repeat("[", 43) + strings.Repeat("]", 43)
	cond := strings.Repeat(nested+" == [] || ", 42) + "true"
	proj := "[" + strings.Repeat(nested+", ", 42) + "[]]"
	for _, c := range []struct {
		name, path string
		form       url.Values
		status     int
	}{
		{"export rules", "/tenants/acme/export-rules", url.Values{"filter": {"#"}, "topic": {"t"}, "condition": {cond}, "projection": {proj}}, http.StatusSeeOther},
		{"webhook rules", "/tenants/acme/webhooks/rules", url.Values{"filter": {"#"}, "destination": {"dst_nowhere"}, "condition": {cond}, "projection": {proj}}, http.StatusBadRequest},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStack(t)
			b := s.browser()
			b.signup("owner")
			b.tenant("acme")
			b.get(c.path)
			// The share is a quarter of a second a second, with a
			// second saved: about 1.7 s of compiling in a row spends it.
			start := time.Now()
			for n := 1; ; n++ {
				a := b.post(c.path, c.form)
				if a.status == http.StatusTooManyRequests {
					if a.header.Get("Retry-After") == "" {
						t.Error("429 without Retry-After")
					}
					break
				}
				if a.status != c.status {
					t.Fatalf("post %d: %d, want %d within the share", n, a.status, c.status)
				}
				if d := time.Since(start); n >= 40 || n >= 2 && d > 15*time.Second {
					t.Fatalf("%d posts took %v compiling, none refused; want 429 past the tenant's share", n, d.Round(time.Millisecond))
				}
			}
		})
	}
}

// TestExportRulesPage: an admin adds an export rule to Kafka on its page
// and removes it; a bad filter or condition comes back next to its field.
func TestExportRulesPage(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("owner")
	b.tenant("acme")
	b.get("/tenants/acme/export-rules")
	for _, tc := range []struct {
		name  string
		form  url.Values
		field string
	}{
		{"a bad filter", url.Values{"filter": {"a/#/b"}, "topic": {"telemetry"}}, "xr-filter"},
		{"a condition that does not compile", url.Values{"filter": {"sensors/#"}, "topic": {"telemetry"}, "condition": {"payload.temp >"}}, "xr-condition"},
		{"a projection that does not compile", url.Values{"filter": {"sensors/#"}, "topic": {"telemetry"}, "projection": {"{1: payload.temp}"}}, "xr-projection"},
	} {
		a := b.post("/tenants/acme/export-rules", tc.form)
		marked := regexp.MustCompile(`id="` + tc.field + `"[^>]*aria-invalid="true"`)
		if a.status != http.StatusBadRequest || !marked.MatchString(a.body) || !strings.Contains(a.body, `class="field-error"`) {
			t.Errorf("%s: %d, want 400 with the reason by the field", tc.name, a.status)
		}
	}
	if a := b.post("/tenants/acme/export-rules", url.Values{"filter": {"sensors/#"}, "topic": {"telemetry"}, "projection": {`{"t": payload.temp}`}}); a.status != http.StatusSeeOther {
		t.Fatalf("add a rule: %d %s", a.status, a.body)
	}
	rules, _ := s.store.Rules(t.Context(), "acme")
	if len(rules) != 1 || rules[0].Filter != "sensors/#" || rules[0].Projection != `{"t": payload.temp}` {
		t.Fatalf("rules: %+v", rules)
	}
	if a := b.get("/tenants/acme/export-rules"); !strings.Contains(a.body, "<code>roost.acme.telemetry</code>") || !strings.Contains(a.body, "<code>{&#34;t&#34;: payload.temp}</code>") {
		t.Errorf("the page does not show the rule's Kafka topic and projection")
	}
	if a := b.post("/tenants/acme/export-rules/"+rules[0].ID+"/delete", nil); a.status != http.StatusSeeOther {
		t.Errorf("delete the rule: %d", a.status)
	}
	if rules, _ := s.store.Rules(t.Context(), "acme"); len(rules) != 0 {
		t.Errorf("rules after deleting: %d", len(rules))
	}
}
