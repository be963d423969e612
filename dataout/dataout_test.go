package dataout_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

func TestSignVerify(t *testing.T) {
	secret := dataout.NewSecret()
	body := []byte(`{"messages":[]}`)
	at := time.Unix(1_800_000_000, 0)
	h := dataout.Sign(secret, at, body)
	if !strings.HasPrefix(h, "t=1800000000,v1=") || len(h) != len("t=1800000000,v1=")+64 {
		t.Fatalf("signature header %q, want t=1800000000,v1=<64 hex>", h)
	}
	if err := dataout.Verify(secret, h, body, at.Add(time.Minute), 5*time.Minute); err != nil {
		t.Errorf("a good signature: %v", err)
	}
	for name, tc := range map[string]struct {
		secret, header string
		body           []byte
		now            time.Time
	}{
		"another body":   {secret, h, []byte(`{"messages":[1]}`), at},
		"another secret": {dataout.NewSecret(), h, body, at},
		"too old":        {secret, h, body, at.Add(6 * time.Minute)},
		"no timestamp":   {secret, strings.Replace(h, "t=", "x=", 1), body, at},
	} {
		if err := dataout.Verify(tc.secret, tc.header, tc.body, tc.now, 5*time.Minute); err == nil {
			t.Errorf("%s: verified, want refused", name)
		}
	}
}

func TestIsJSON(t *testing.T) {
	for _, tc := range []struct {
		payload string
		json    bool
	}{
		{`{"a": 1}`, true}, {`[1, 2]`, true}, {`21.5`, true}, {`"text"`, true}, {`true`, true},
		{``, false}, {`hello`, false}, {`{"a": 1`, false}, {"{\"a\": \"\xff\"}", false}, {"\x00\x01", false},
	} {
		if got := dataout.IsJSON([]byte(tc.payload)); got != tc.json {
			t.Errorf("IsJSON(%q) = %v, want %v", tc.payload, got, tc.json)
		}
		body := dataout.Body(dataout.Batch{Messages: []dataout.Message{{Topic: "t", Payload: []byte(tc.payload)}}})
		if !json.Valid(body) || !utf8.Valid(body) {
			t.Errorf("the body for %q is not valid UTF-8 JSON: %q", tc.payload, body)
		}
	}
}

func TestSealer(t *testing.T) {
	s, err := dataout.NewSealer(dataout.KeyFromToken("rop_one-token-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	sealed := s.Seal([]byte("whsec_abc"), "acme/dst_1")
	if strings.Contains(sealed, "whsec_abc") {
		t.Fatalf("sealed value shows the secret: %s", sealed)
	}
	if got, err := s.Open(sealed, "acme/dst_1"); err != nil || string(got) != "whsec_abc" {
		t.Errorf("open: got %q, %v; want whsec_abc", got, err)
	}
	if _, err := s.Open(sealed, "evil/dst_1"); err == nil {
		t.Error("a sealed value opened under another tenant's context")
	}
	other, _ := dataout.NewSealer(dataout.KeyFromToken("rop_another-token-0123456789"))
	if _, err := other.Open(sealed, "acme/dst_1"); !errors.Is(err, dataout.ErrKeyChanged) {
		t.Errorf("open under another key: got %v, want ErrKeyChanged", err)
	}
}

func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		refused bool
	}{
		{"127.0.0.1", true}, {"127.9.9.9", true}, {"::1", true}, {"10.1.2.3", true}, {"172.16.0.1", true},
		{"172.31.255.255", true}, {"192.168.1.1", true}, {"169.254.169.254", true}, {"fe80::1", true},
		{"fc00::1", true}, {"fd12::1", true}, {"0.0.0.0", true}, {"::", true}, {"224.0.0.1", true},
		{"ff02::1", true}, {"100.64.0.1", true}, {"255.255.255.255", true},
		{"::ffff:127.0.0.1", true}, {"fe80::1%eth0", true}, {"::1%lo", true}, {"::ffff:169.254.169.254", true}, {"64:ff9b::a00:1", true}, {"2002:7f00:1::", true},
		// Cloud metadata services: AWS's over IPv6; Azure's platform
		// address (the wireserver), outside every private range.
		{"fd00:ec2::254", true}, {"168.63.129.16", true}, {"::ffff:168.63.129.16", true}, {"64:ff9b::a83f:8110", true},
		{"8.8.8.8", false}, {"1.1.1.1", false}, {"172.32.0.1", false}, {"2606:4700::1111", false}, {"64:ff9b::808:808", false},
	} {
		if got := dataout.Refused(netip.MustParseAddr(tc.addr)); got != tc.refused {
			t.Errorf("Refused(%s) = %v, want %v", tc.addr, got, tc.refused)
		}
	}
}

func TestCheckURL(t *testing.T) {
	strict, _ := dataout.NewGuard("", false)
	allowing, _ := dataout.NewGuard("127.0.0.1, hooks.internal", false)
	dev, _ := dataout.NewGuard("", true)
	for _, tc := range []struct {
		name  string
		g     *dataout.Guard
		url   string
		valid bool
	}{
		{"public https", strict, "https://hooks.example.com/roost", true},
		{"plain http", strict, "http://hooks.example.com/roost", false},
		{"plain http in development", dev, "http://hooks.example.com/roost", true},
		{"loopback", strict, "https://127.0.0.1/x", false},
		{"loopback in development", dev, "http://127.0.0.1/x", false},
		{"IPv6 loopback", strict, "https://[::1]/x", false},
		{"metadata", strict, "https://169.254.169.254/latest/meta-data/", false},
		{"Azure's wireserver", strict, "https://168.63.129.16/machine?comp=health", false},
		{"private", strict, "https://10.0.0.5/x", false},
		{"mapped loopback", strict, "https://[::ffff:127.0.0.1]/x", false},
		{"zoned link-local", strict, "https://[fe80::1%25eth0]/x", false},
		{"allowed address over http", allowing, "http://127.0.0.1:8080/x", true},
		{"allowed name over http", allowing, "http://hooks.internal/x", true},
		{"credentials", strict, "https://user:pw@hooks.example.com/", false},
		{"ftp", strict, "ftp://hooks.example.com/", false},
		{"relative", strict, "/hooks", false},
		{"no host", strict, "https:///x", false},
	} {
		err := tc.g.CheckURL(tc.url)
		if (err == nil) != tc.valid {
			t.Errorf("%s: CheckURL(%q) = %v, want valid %v", tc.name, tc.url, err, tc.valid)
		}
	}
}

// receiver is a real HTTP server under the test's control that checks
// every request's signature.
type receiver struct {
	*httptest.Server
	secret  string
	got     atomic.Int32
	bad     atomic.Int32
	last    atomic.Value // []byte
	respond func(w http.ResponseWriter, r *http.Request)
}

func newReceiver(t *testing.T, tlsServer bool, respond func(w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{secret: dataout.NewSecret(), respond: respond}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.got.Add(1)
		rc.last.Store(body)
		if err := dataout.Verify(rc.secret, r.Header.Get(dataout.SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
			rc.bad.Add(1)
			w.WriteHeader(400)
			return
		}
		if rc.respond != nil {
			rc.respond(w, r)
			return
		}
		w.WriteHeader(204)
	})
	if tlsServer {
		rc.Server = httptest.NewTLSServer(h)
	} else {
		rc.Server = httptest.NewServer(h)
	}
	t.Cleanup(rc.Close)
	return rc
}

func newSender(t *testing.T, allow string, timeout time.Duration, roots *x509.CertPool) *dataout.Sender {
	t.Helper()
	g, err := dataout.NewGuard(allow, false)
	if err != nil {
		t.Fatal(err)
	}
	s, err := dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: timeout, RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var sample = dataout.Batch{Tenant: "acme", Destination: "dst_1", Messages: []dataout.Message{
	{ID: "m1", Topic: "sensors/1/temp", Payload: []byte(`{"temp": 21.5}`), QoS: 1, Device: "sensor-1", ClientID: "sensor-1", Time: time.Unix(1_800_000_000, 0)},
	{ID: "m2", Topic: "sensors/1/raw", Payload: []byte{0xff, 0x00, 'x'}, QoS: 0, Device: "sensor-1", ClientID: "sensor-1", Time: time.Unix(1_800_000_001, 0)},
}}

func TestSendSignedBatch(t *testing.T) {
	rc := newReceiver(t, false, nil)
	s := newSender(t, "127.0.0.1", 5*time.Second, nil)
	a := s.Send(context.Background(), dataout.Webhook{URL: rc.URL + "/hook", Secret: rc.secret, Headers: map[string]string{"X-Env": "test"}}, sample)
	if !a.OK() || a.Status != 204 {
		t.Fatalf("send: %+v, want 204", a)
	}
	if rc.got.Load() != 1 || rc.bad.Load() != 0 {
		t.Fatalf("receiver got %d requests, %d badly signed; want 1, 0", rc.got.Load(), rc.bad.Load())
	}
	var body struct {
		Tenant   string `json:"tenant"`
		Messages []struct {
			Topic           string          `json:"topic"`
			Payload         json.RawMessage `json:"payload"`
			PayloadEncoding string          `json:"payload_encoding"`
			QoS             int             `json:"qos"`
			Device          string          `json:"device"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(rc.last.Load().([]byte), &body); err != nil {
		t.Fatal(err)
	}
	if len(body.Messages) != 2 || body.Tenant != "acme" {
		t.Fatalf("body: %s", rc.last.Load())
	}
	// A JSON payload is embedded as the device sent it, its spaces kept.
	if m := body.Messages[0]; m.PayloadEncoding != "json" || string(m.Payload) != `{"temp": 21.5}` || m.QoS != 1 || m.Device != "sensor-1" {
		t.Errorf("JSON message: %+v (payload %s)", m, m.Payload)
	}
	want := `"` + base64.StdEncoding.EncodeToString([]byte{0xff, 0x00, 'x'}) + `"`
	if m := body.Messages[1]; m.PayloadEncoding != "base64" || string(m.Payload) != want {
		t.Errorf("binary message: encoding %s payload %s, want base64 %s", m.PayloadEncoding, m.Payload, want)
	}
}

// TestSendRefusesOwnNetwork: without the operator's allow list, nothing
// reaches loopback, private or metadata addresses, however named; the
// receiver never sees a request.
func TestSendRefusesOwnNetwork(t *testing.T) {
	rc := newReceiver(t, false, nil)
	port := rc.URL[strings.LastIndex(rc.URL, ":")+1:]
	dev, _ := dataout.NewGuard("", true) // development: http allowed, addresses still checked
	s, _ := dataout.NewSender(dataout.SenderConfig{Guard: dev, Timeout: 2 * time.Second})
	for _, u := range []string{
		"http://127.0.0.1:" + port + "/",
		"http://[::1]:" + port + "/",
		"http://localhost:" + port + "/", // a name resolving to loopback: refused at connect
		"http://10.0.0.1:" + port + "/",
		"http://169.254.169.254/latest/meta-data/",
		"http://[::ffff:127.0.0.1]:" + port + "/",
	} {
		a := s.Send(context.Background(), dataout.Webhook{URL: u, Secret: rc.secret}, sample)
		if a.OK() || a.Kind != dataout.ErrorRefused {
			t.Errorf("%s: got %+v, want refused_address", u, a)
		}
	}
	if n := rc.got.Load(); n != 0 {
		t.Errorf("the receiver got %d requests, want none", n)
	}
}

// TestRefusalNamesNoAddress: what a tenant reads of a refused connection
// (a send test's answer, a destination's last error) names no address, and
// a name that does not resolve reads the same as one resolving to a
// refused address; so neither maps the hub's internal names for a tenant.
// The operator's log has the address.
func TestRefusalNamesNoAddress(t *testing.T) {
	var logs testenv.Buffer
	g, _ := dataout.NewGuard("", true) // development: http allowed, addresses still checked
	g.Log = slog.New(slog.NewTextHandler(&logs, nil))
	s, _ := dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: 2 * time.Second})
	texts := map[string]string{}
	for _, host := range []string{"localhost", "no-such-host.invalid"} {
		a := s.Send(context.Background(), dataout.Webhook{URL: "http://" + host + ":9/hook", Secret: "s"}, sample)
		if a.OK() || a.Kind != dataout.ErrorRefused || !errors.Is(a.Err, dataout.ErrRefusedAddress) {
			t.Fatalf("%s: got kind %q, err %v; want refused_address", host, a.Kind, a.Err)
		}
		text := a.Err.Error()
		for _, leak := range []string{"127.0.0.1", "::1", "lookup", "no such host", "dial"} {
			if strings.Contains(text, leak) {
				t.Errorf("%s: the tenant reads %q, which says %q", host, text, leak)
			}
		}
		texts[host] = strings.ReplaceAll(text, host, "HOST")
	}
	if texts["localhost"] != texts["no-such-host.invalid"] {
		t.Errorf("a name resolving to loopback reads %q, one that does not resolve %q; want them alike", texts["localhost"], texts["no-such-host.invalid"])
	}
	if !strings.Contains(logs.String(), "127.0.0.1") && !strings.Contains(logs.String(), "::1") {
		t.Errorf("the operator's log does not name the refused address:\n%s", logs.String())
	}
}

// TestSendRedirectNotFollowed: a receiver that redirects (here, to an
// allowed host, where the hub would otherwise go) fails the attempt; the
// target sees nothing.
func TestSendRedirectNotFollowed(t *testing.T) {
	target := newReceiver(t, false, nil)
	rc := newReceiver(t, false, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/internal", http.StatusTemporaryRedirect)
	})
	rc.secret = target.secret
	s := newSender(t, "127.0.0.1", 2*time.Second, nil)
	a := s.Send(context.Background(), dataout.Webhook{URL: rc.URL, Secret: rc.secret}, sample)
	if a.OK() || a.Status != 307 || a.Kind != dataout.ErrorStatus {
		t.Errorf("redirect: got %+v, want a failed 307", a)
	}
	if n := target.got.Load(); n != 0 {
		t.Errorf("the redirect target got %d requests, want none", n)
	}
}

func TestSendFailures(t *testing.T) {
	slow := newReceiver(t, false, func(w http.ResponseWriter, r *http.Request) { time.Sleep(3 * time.Second); w.WriteHeader(200) })
	failing := newReceiver(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(503)
	})
	reset := newReceiver(t, false, func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	tlsRC := newReceiver(t, true, nil)
	impatient := newSender(t, "127.0.0.1", 500*time.Millisecond, nil)
	s := newSender(t, "127.0.0.1", 5*time.Second, nil)
	for _, tc := range []struct {
		name   string
		s      *dataout.Sender
		rc     *receiver
		kind   dataout.ErrorKind
		status int
	}{
		{"timeout", impatient, slow, dataout.ErrorTimeout, 0},
		{"503", s, failing, dataout.ErrorStatus, 503},
		{"connection reset", s, reset, dataout.ErrorConnect, 0},
		{"untrusted certificate", s, tlsRC, dataout.ErrorTLS, 0},
	} {
		// The URL's path is often a credential: no error repeats it.
		a := tc.s.Send(context.Background(), dataout.Webhook{URL: tc.rc.URL + "/services/T0/TOPSECRET?token=QSECRET", Secret: tc.rc.secret}, sample)
		if a.OK() || a.Kind != tc.kind || a.Status != tc.status {
			t.Errorf("%s: got %+v, want kind %s status %d", tc.name, a, tc.kind, tc.status)
		}
		if a.Err == nil || strings.Contains(a.Err.Error(), "SECRET") {
			t.Errorf("%s: the error %v repeats the URL's path", tc.name, a.Err)
		}
		if tc.status == 503 && a.RetryAfter != 30*time.Second {
			t.Errorf("503 with Retry-After 30: RetryAfter %v", a.RetryAfter)
		}
	}
	// The same TLS receiver, trusted: delivered.
	pool := x509.NewCertPool()
	pool.AddCert(tlsRC.Certificate())
	trusting := newSender(t, "127.0.0.1", 2*time.Second, pool)
	if a := trusting.Send(context.Background(), dataout.Webhook{URL: tlsRC.URL, Secret: tlsRC.secret}, sample); !a.OK() {
		t.Errorf("trusted TLS receiver: %+v", a)
	}
}

// TestSendSlowBody: a receiver that answers 200 and then trickles its body
// took the batch; the sender does not wait past its timeout for the rest.
func TestSendSlowBody(t *testing.T) {
	rc := newReceiver(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		for range 30 {
			w.Write([]byte("x"))
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	})
	s := newSender(t, "127.0.0.1", 500*time.Millisecond, nil)
	start := time.Now()
	a := s.Send(context.Background(), dataout.Webhook{URL: rc.URL, Secret: rc.secret}, sample)
	if !a.OK() || a.Status != 200 {
		t.Errorf("slow body after 200: %+v, want delivered", a)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the send took %v, want about the 500ms timeout", d)
	}
}

func TestSealerWebhook(t *testing.T) {
	s, _ := dataout.NewSealer(dataout.KeyFromToken("rop_one-token-0123456789"))
	d := tenants.Destination{ID: "dst_1", URL: "https://hooks.example.com/", Sealed: tenants.Sealed{
		Secret: s.SealSecret("acme", "dst_1", "whsec_abc"), Headers: s.SealHeaders("acme", "dst_1", map[string]string{"Authorization": "Bearer x"})}}
	wh, err := s.Webhook("acme", d)
	if err != nil || wh.Secret != "whsec_abc" || wh.Headers["Authorization"] != "Bearer x" || wh.URL != d.URL {
		t.Fatalf("Webhook: %+v, %v", wh, err)
	}
	if _, err := s.Webhook("other", d); err == nil {
		t.Error("another tenant's row opened")
	}
	moved := d
	moved.ID = "dst_2"
	if _, err := s.Webhook("acme", moved); err == nil {
		t.Error("a secret moved to another destination opened")
	}
	other, _ := dataout.NewSealer(dataout.KeyFromToken("rop_two-token-0123456789"))
	if _, err := other.Webhook("acme", d); !errors.Is(err, dataout.ErrKeyChanged) {
		t.Errorf("under another key: %v, want ErrKeyChanged", err)
	}
	if s.SealHeaders("acme", "dst_1", nil) != "" {
		t.Error("no headers sealed to something")
	}
}
