package auth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
	"github.com/roosthub/roost/web"
)

const operatorToken = "rop_front-test-operator-token-0123"

// front is the API and the console of one process over one auth service,
// as `roost serve` builds them.
type front struct {
	t     *testing.T
	url   string
	store *tenants.Store
	auth  *auth.Service
}

func newFront(t *testing.T) *front {
	t.Helper()
	ctx := context.Background()
	store, err := tenants.Open(ctx, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	key := bytes.Repeat([]byte("f"), 32)
	a, err := auth.New(auth.Config{Store: store, SigningKey: key, AdminToken: operatorToken})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.New(api.Config{Store: store, SigningKey: key, AdminToken: operatorToken, Auth: a})
	if err != nil {
		t.Fatal(err)
	}
	con, err := web.New(web.Config{Store: store, SigningKey: key, AdminToken: operatorToken, Auth: a})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") || r.URL.Path == "/metrics" {
			srv.ServeHTTP(w, r)
			return
		}
		con.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	return &front{t: t, url: hs.URL, store: store, auth: a}
}

// api calls the API from addr and returns the status and the body.
func (f *front) api(addr, method, path, token string, body any) (int, map[string]any) {
	f.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, f.url+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := testenv.ClientFrom(addr).Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// browser is a console visitor from addr.
type browser struct {
	f    *front
	c    *http.Client
	csrf string
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (f *front) browser(addr string) *browser {
	c := testenv.ClientFrom(addr)
	c.Jar, _ = cookiejar.New(nil)
	b := &browser{f: f, c: c}
	b.get("/login")
	return b
}

func (b *browser) get(path string) *http.Response {
	b.f.t.Helper()
	resp, err := b.c.Get(b.f.url + path)
	if err != nil {
		b.f.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if m := csrfField.FindSubmatch(body); m != nil {
		b.csrf = string(m[1])
	}
	return resp
}

func (b *browser) post(path string, form url.Values) *http.Response {
	b.f.t.Helper()
	form.Set("csrf", b.csrf)
	resp, err := b.c.PostForm(b.f.url+path, form)
	if err != nil {
		b.f.t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func (b *browser) cookie(name string) string {
	u, _ := url.Parse(b.f.url)
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}

func (f *front) account(email string) {
	f.t.Helper()
	if _, err := f.store.CreateAccount(context.Background(), tenants.Signup{Email: email, Password: "correct horse battery"}); err != nil {
		f.t.Fatal(err)
	}
}

// TestOneLoginBudget: 40 wrong logins at once for one account from one
// address, half through the API and half through the console, evaluate
// five passwords between them: one budget, counted before the hash.
func TestOneLoginBudget(t *testing.T) {
	f := newFront(t)
	f.account("victim@example.com")
	var wg sync.WaitGroup
	statuses := make([]int, 40)
	browsers := make([]*browser, 20)
	for i := range browsers {
		browsers[i] = f.browser("127.0.0.2")
	}
	for i := range statuses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wrong := fmt.Sprintf("wrong password %d", i)
			if i%2 == 0 {
				statuses[i], _ = f.api("127.0.0.2", "POST", "/v1/login", "", map[string]string{"email": "victim@example.com", "password": wrong})
				return
			}
			statuses[i] = browsers[i/2].post("/login", url.Values{"email": {"victim@example.com"}, "password": {wrong}}).StatusCode
		}()
	}
	wg.Wait()
	evaluated := 0
	for i, s := range statuses {
		switch s {
		case http.StatusUnauthorized:
			evaluated++
		case http.StatusTooManyRequests:
		default:
			t.Errorf("attempt %d: %d", i, s)
		}
	}
	if evaluated != 5 {
		t.Errorf("%d of 40 wrong logins through the API and the console were evaluated, want 5", evaluated)
	}
	// The right password from an address the account signed in from is
	// not held up by them.
	b := f.browser("127.0.0.3")
	if r := b.post("/login", url.Values{"email": {"victim@example.com"}, "password": {"correct horse battery"}}); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("the first sign-in from another address: %d", r.StatusCode)
	}
}

// TestLogoutEndsEverywhere: a session started in the console works as an
// API bearer token until the console logs out, and one ended through the
// API no longer opens the console.
func TestLogoutEndsEverywhere(t *testing.T) {
	f := newFront(t)
	f.account("ada@example.com")
	b := f.browser("127.0.0.1")
	if r := b.post("/login", url.Values{"email": {"ada@example.com"}, "password": {"correct horse battery"}}); r.StatusCode != http.StatusSeeOther {
		t.Fatalf("console login: %d", r.StatusCode)
	}
	token := b.cookie("roost_session")
	if s, _ := f.api("127.0.0.1", "GET", "/v1/me", token, nil); s != 200 {
		t.Fatalf("the console's session as a bearer token: %d", s)
	}
	b.post("/logout", url.Values{})
	if s, _ := f.api("127.0.0.1", "GET", "/v1/me", token, nil); s != 401 {
		t.Errorf("the console's session as a bearer token after the console's logout: %d, want 401", s)
	}

	_, m := f.api("127.0.0.1", "POST", "/v1/login", "", map[string]string{"email": "ada@example.com", "password": "correct horse battery"})
	apiToken := m["token"].(string)
	c := f.browser("127.0.0.1")
	u, _ := url.Parse(f.url)
	c.c.Jar.SetCookies(u, []*http.Cookie{{Name: "roost_session", Value: apiToken, Path: "/"}})
	if r := c.get("/tenants"); r.StatusCode != http.StatusOK {
		t.Fatalf("the API's session as a cookie: %d", r.StatusCode)
	}
	if s, _ := f.api("127.0.0.1", "POST", "/v1/logout", apiToken, nil); s != 204 {
		t.Fatalf("API logout: %d", s)
	}
	if r := c.get("/tenants"); r.StatusCode != http.StatusSeeOther {
		t.Errorf("the API's session as a cookie after the API's logout: %d, want a redirect to log in", r.StatusCode)
	}
	// The operator's console session is not an API credential.
	op := f.browser("127.0.0.1")
	op.post("/admin/login", url.Values{"token": {operatorToken}})
	if s, _ := f.api("127.0.0.1", "GET", "/v1/admin/stats", op.cookie("roost_operator"), nil); s != 401 {
		t.Errorf("the operator's console cookie on the admin API: %d, want 401", s)
	}
}

// TestOneOperatorBudget: wrong operator tokens through the admin API and
// the console's operator sign-in spend one budget per address; the right
// token passes both.
func TestOneOperatorBudget(t *testing.T) {
	f := newFront(t)
	b := f.browser("127.0.0.2")
	for i := range 5 {
		if s, _ := f.api("127.0.0.2", "GET", "/v1/admin/stats", fmt.Sprintf("rop_guess-%d-0123456789", i), nil); s != 401 {
			t.Fatalf("API guess %d: %d", i, s)
		}
		if r := b.post("/admin/login", url.Values{"token": {fmt.Sprintf("rop_other-%d-0123456789", i)}}); r.StatusCode != 401 {
			t.Fatalf("console guess %d: %d", i, r.StatusCode)
		}
	}
	if s, _ := f.api("127.0.0.2", "GET", "/v1/admin/stats", "rop_guess-x-0123456789", nil); s != 429 {
		t.Errorf("the eleventh guess, through the API: %d, want 429", s)
	}
	if r := b.post("/admin/login", url.Values{"token": {"rop_guess-y-0123456789"}}); r.StatusCode != 429 {
		t.Errorf("the twelfth guess, through the console: %d, want 429", r.StatusCode)
	}
	if s, _ := f.api("127.0.0.2", "GET", "/v1/admin/stats", operatorToken, nil); s != 200 {
		t.Errorf("the right token through the API: %d", s)
	}
	if r := b.post("/admin/login", url.Values{"token": {operatorToken}}); r.StatusCode != http.StatusSeeOther {
		t.Errorf("the right token through the console: %d", r.StatusCode)
	}
}

// TestOneSignupBudget: sign-ups through the API and the console spend one
// budget per address.
func TestOneSignupBudget(t *testing.T) {
	f := newFront(t)
	b := f.browser("127.0.0.2")
	for i := range 15 {
		if s, _ := f.api("127.0.0.2", "POST", "/v1/signup", "", map[string]string{"email": fmt.Sprintf("a%d@example.com", i), "password": "correct horse battery"}); s != 201 {
			t.Fatalf("API sign-up %d: %d", i, s)
		}
		if r := b.post("/signup", url.Values{"email": {fmt.Sprintf("c%d@example.com", i)}, "password": {"correct horse battery"}, "password2": {"correct horse battery"}}); r.StatusCode != http.StatusSeeOther {
			t.Fatalf("console sign-up %d: %d", i, r.StatusCode)
		}
		b.post("/logout", url.Values{})
		b.get("/signup")
	}
	if s, _ := f.api("127.0.0.2", "POST", "/v1/signup", "", map[string]string{"email": "late@example.com", "password": "correct horse battery"}); s != 429 {
		t.Errorf("the 31st sign-up from one address: %d, want 429", s)
	}
}
