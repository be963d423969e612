package web_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// setCookies are the cookies an answer sets, by name.
func setCookies(a answer) map[string]*http.Cookie {
	cs := map[string]*http.Cookie{}
	for _, c := range (&http.Response{Header: a.header}).Cookies() {
		cs[c.Name] = c
	}
	return cs
}

// jarCookie is the value of b's cookie called name.
func (b *browser) jarCookie(name string) string {
	b.s.t.Helper()
	u, _ := url.Parse(b.s.url)
	for _, c := range b.http.Jar.Cookies(u) {
		if c.Name == name {
			return c.Value
		}
	}
	b.s.t.Fatalf("the browser has no %s cookie", name)
	return ""
}

// raw sends a request with exactly these cookies, and no jar.
func (s *stack) raw(method, path string, form url.Values, cookies ...*http.Cookie) answer {
	s.t.Helper()
	var body *strings.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	} else {
		body = strings.NewReader("")
	}
	req, err := http.NewRequest(method, s.url+path, body)
	if err != nil {
		s.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	client := &http.Client{Transport: s.transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	return (&browser{s: s}).read(resp)
}

// TestConsoleCookieNames: over plain http (development, `make run`) the
// cookies keep their names and are not Secure, which a browser needs to
// keep them there. Over HTTPS the session, CSRF and operator cookies are
// __Host- cookies: Secure, Path=/, no Domain. A cookie of the old name is
// not read (a neighbour may have planted it), whenever its session began:
// the upgrade signs the console out once. Logging out drops both names.
func TestConsoleCookieNames(t *testing.T) {
	s := newStack(t)
	dev := s.browser()
	if a := dev.get("/login"); setCookies(a)["roost_csrf"] == nil || setCookies(a)["roost_csrf"].Secure || strings.Contains(a.header.Get("Set-Cookie"), "__Host-") {
		t.Errorf("the login page over http sets %v, want roost_csrf, not Secure, no __Host- name", a.header["Set-Cookie"])
	}
	email := dev.signup("ada")
	devNonce, devToken := dev.jarCookie("roost_csrf"), dev.csrf
	before := dev.jarCookie("roost_session") // a session begun before the HTTPS console
	if a := dev.get("/tenants"); a.status != http.StatusOK {
		t.Fatalf("signed in over http: %d, want 200", a.status)
	}

	sec := s.secureConsole()
	v := sec.browser()
	a := v.get("/login")
	if c := setCookies(a)["__Host-roost_csrf"]; c == nil || !c.Secure || !c.HttpOnly || c.Path != "/" || c.Domain != "" || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("the CSRF cookie over HTTPS: %+v, want __Host-roost_csrf, Secure, HttpOnly, Path=/, no Domain, SameSite=Strict", c)
	}
	if _, ok := setCookies(a)["roost_csrf"]; ok {
		t.Error("over HTTPS the CSRF cookie is also set under its old name")
	}
	a = v.post("/login", url.Values{"email": {email}, "password": {"correct horse battery"}})
	if c := setCookies(a)["__Host-roost_session"]; a.status != http.StatusSeeOther || c == nil || !c.Secure || !c.HttpOnly || c.Path != "/" || c.Domain != "" || c.SameSite != http.SameSiteLaxMode {
		t.Errorf("login over HTTPS: %d, session cookie %+v, want __Host-roost_session, Secure, HttpOnly, Path=/, no Domain, SameSite=Lax", a.status, c)
	}
	if a := v.get("/tenants"); a.status != http.StatusOK {
		t.Errorf("signed in over HTTPS: %d, want 200", a.status)
	}

	// Not read: the old name, of a session from before the upgrade or of
	// one begun since (a neighbour's plant).
	planter := s.browser()
	planter.signup("planter")
	planted := planter.jarCookie("roost_session")
	for what, token := range map[string]string{"from before the upgrade": before, "begun after it": planted} {
		a = sec.raw("GET", "/tenants", nil, &http.Cookie{Name: "roost_session", Value: token})
		if a.status != http.StatusSeeOther || !strings.HasPrefix(a.location, "/login") || setCookies(a)["__Host-roost_session"] != nil {
			t.Errorf("an old-named cookie of a session %s: %d %s, want the login page and no session cookie", what, a.status, a.location)
		}
	}
	a = sec.raw("GET", "/tenants", nil, &http.Cookie{Name: "roost_session", Value: "not-a-token"})
	if a.status != http.StatusSeeOther || setCookies(a)["__Host-roost_session"] != nil {
		t.Errorf("an old-named cookie with no session: %d, want the login page", a.status)
	}
	// A CSRF nonce of the old name is not read: its form asks for a reload.
	a = sec.raw("POST", "/logout", url.Values{"csrf": {devToken}}, &http.Cookie{Name: "roost_csrf", Value: devNonce},
		&http.Cookie{Name: "__Host-roost_session", Value: before})
	if a.status != http.StatusForbidden {
		t.Errorf("a form with an old-named CSRF cookie: %d, want 403", a.status)
	}
	if a := sec.raw("GET", "/tenants", nil, &http.Cookie{Name: "__Host-roost_session", Value: before}); a.status != http.StatusOK {
		t.Errorf("the session after the refused logout: %d, want it open", a.status)
	}

	// Logging out drops both names.
	a = v.post("/logout", nil)
	cs := setCookies(a)
	for _, name := range []string{"__Host-roost_session", "roost_session"} {
		if c := cs[name]; c == nil || c.MaxAge >= 0 {
			t.Errorf("logout over HTTPS: %s set %+v, want it dropped", name, c)
		}
	}

	// The operator's cookie too.
	op := sec.browser()
	op.get("/admin/login")
	a = op.post("/admin/login", url.Values{"token": {operatorToken}})
	if c := setCookies(a)["__Host-roost_operator"]; a.status != http.StatusSeeOther || c == nil || !c.Secure || c.Path != "/" || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("operator login over HTTPS: %d, cookie %+v, want __Host-roost_operator, Secure, Path=/, SameSite=Strict", a.status, c)
	}
	if a := op.get("/admin"); a.status != http.StatusOK {
		t.Errorf("the operator's pages over HTTPS: %d, want 200", a.status)
	}
}
