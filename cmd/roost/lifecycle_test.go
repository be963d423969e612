package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// TestValidateChangesNothing: checking a config, good or bad, leaves it
// as it was; a default that depends on another setting (the MQTT over TLS
// port with --dev-tls) is worked out where it is used.
func TestValidateChangesNothing(t *testing.T) {
	base, err := parseConfig("serve", nil, env(map[string]string{"ROOST_DATA_DIR": t.TempDir()}))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		edit  func(c *config)
		valid bool
	}{
		{"defaults", func(c *config) {}, true},
		{"dev TLS without an address", func(c *config) { c.DevTLS = true }, true},
		{"dev TLS sharing its port with wss", func(c *config) { c.DevTLS, c.WSSAddr = true, ":8883" }, true},
		{"bad device endpoints", func(c *config) { c.DevTLS, c.DeviceEndpoints = true, "tcp://x" }, false},
		{"bad proxy listener", func(c *config) { c.DevTLS, c.ProxyProtocol = true, "mqtts,http" }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := *base
			tc.edit(&c)
			before := c
			for i := range 2 {
				if err := c.Validate(); (err == nil) != tc.valid {
					t.Fatalf("Validate #%d: got %v, want valid=%v", i+1, err, tc.valid)
				}
				if c != before {
					t.Fatalf("Validate #%d changed the config:\ngot  %+v\nwant %+v", i+1, c, before)
				}
			}
		})
	}
	c := *base
	c.DevTLS = true
	if got := c.mqttTLSAddr(); got != ":8883" {
		t.Errorf("mqttTLSAddr with --dev-tls and no address: got %q, want :8883", got)
	}
	c.MQTTTLSAddr = "127.0.0.1:9883"
	if got := c.mqttTLSAddr(); got != "127.0.0.1:9883" {
		t.Errorf("mqttTLSAddr with an address: got %q, want 127.0.0.1:9883", got)
	}
}

// TestBadSettingOpensNothing: a setting that is wrong, or names a file
// that is missing or wrong, stops the start before anything is opened:
// the data dir is never created (no database, no migrations, no operator
// token, no sessions), the ports stay free, and a data-plane node does
// not reach its database (the error names the setting, not Postgres).
func TestBadSettingOpensNothing(t *testing.T) {
	tests := []struct {
		name string
		role string
		vars map[string]string
		want string
	}{
		{"device endpoints", roleAll, map[string]string{"ROOST_DEVICE_ENDPOINTS": "mqtt://ok:1883,tcp://nope:1"}, "ROOST_DEVICE_ENDPOINTS"},
		{"device endpoint without a host", roleAll, map[string]string{"ROOST_DEVICE_ENDPOINTS": "mqtts://"}, "ROOST_DEVICE_ENDPOINTS"},
		{"plans file missing", roleAll, map[string]string{"ROOST_PLANS_FILE": "/no/such/plans.yaml"}, "ROOST_PLANS_FILE"},
		{"plans file bad", roleAll, map[string]string{"ROOST_PLANS_FILE": "testdata/bad-plans.yaml"}, "ROOST_PLANS_FILE"},
		{"certificate missing", roleAll, map[string]string{"ROOST_MQTT_TLS_ADDR": "127.0.0.1:0", "ROOST_TLS_CERT": "/no/cert.pem", "ROOST_TLS_KEY": "/no/key.pem"}, "ROOST_TLS_CERT"},
		{"control plane's device endpoints", roleControl, map[string]string{"ROOST_DEVICE_ENDPOINTS": "http://x"}, "ROOST_DEVICE_ENDPOINTS"},
		{"data plane's device endpoints", roleData, map[string]string{"ROOST_DEVICE_ENDPOINTS": "ws//x"}, "ROOST_DEVICE_ENDPOINTS"},
		{"data plane's plans file", roleData, map[string]string{"ROOST_PLANS_FILE": "testdata/bad-plans.yaml"}, "ROOST_PLANS_FILE"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			addrs := freeAddrs(t, 3)
			httpAddr, mqttAddr, forwardAddr := addrs[0], addrs[1], addrs[2]
			vars := map[string]string{"ROOST_DATA_DIR": dir, "ROOST_HTTP_ADDR": httpAddr, "ROOST_MQTT_ADDR": mqttAddr, "ROOST_FORWARD_ADDR": forwardAddr,
				// Nothing answers here: reaching for it would fail with
				// another error than the setting's.
				"ROOST_DATABASE_URL": "postgres://nobody@127.0.0.1:1/none", "ROOST_ADMIN_TOKEN": "rop_lifecycle-test-0123456789"}
			if tc.role == roleAll {
				delete(vars, "ROOST_DATABASE_URL")
			}
			for k, v := range tc.vars {
				vars[k] = v
			}
			var out, errOut bytes.Buffer
			err := run(context.Background(), []string{tc.role}, env(vars), &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("roost %s: got %v, want an error naming %s", tc.role, err, tc.want)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the data dir exists after a start that failed on %s (err %v): something was opened first", tc.want, err)
			}
			if out.Len() > 0 {
				t.Errorf("stdout: got %q, want nothing told before the start failed", out.String())
			}
			mustBeFree(t, httpAddr, mqttAddr, forwardAddr)
		})
	}
}

// TestFailedStartReleasesPorts: a start that fails after the HTTP and
// MQTT listeners were bound (a later listener's port is taken) releases
// them, and tells nobody it was listening.
func TestFailedStartReleasesPorts(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"websocket port taken", []string{"--ws-addr", taken.Addr().String()}, "ROOST_WS_ADDR"},
		{"TLS port taken", []string{"--dev-tls", "--mqtt-tls-addr", taken.Addr().String()}, "ROOST_MQTT_TLS_ADDR"},
		{"profiler port taken", []string{"--ws-addr", "127.0.0.1:0", "--debug-addr", taken.Addr().String()}, "ROOST_DEBUG_ADDR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addrs := freeAddrs(t, 2)
			httpAddr, mqttAddr := addrs[0], addrs[1]
			var out, errOut bytes.Buffer
			args := append([]string{"serve", "--http-addr", httpAddr, "--mqtt-addr", mqttAddr}, tc.args...)
			err := run(context.Background(), args, env(map[string]string{"ROOST_DATA_DIR": t.TempDir()}), &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve: got %v, want an error naming %s", err, tc.want)
			}
			if strings.Contains(out.String(), " on ") {
				t.Errorf("stdout told of listeners although the start failed:\n%s", out.String())
			}
			mustBeFree(t, httpAddr, mqttAddr)
		})
	}
}

// TestFailedDataPlaneStartAnnouncesNothing: a data-plane node whose start
// fails after its listeners were bound releases its HTTP, MQTT and
// forwarding ports, and leaves no node in the fleet's table.
func TestFailedDataPlaneStartAnnouncesNothing(t *testing.T) {
	url := testenv.PostgresURL(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addrs := freeAddrs(t, 3)
	httpAddr, mqttAddr, forwardAddr := addrs[0], addrs[1], addrs[2]
	vars := map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_DATABASE_URL": url, "ROOST_ADMIN_TOKEN": "rop_lifecycle-test-0123456789",
		"ROOST_SESSION_STORE": "memory", "ROOST_HTTP_ADDR": httpAddr, "ROOST_MQTT_ADDR": mqttAddr, "ROOST_FORWARD_ADDR": forwardAddr,
		"ROOST_WS_ADDR": taken.Addr().String()}
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{roleData}, env(vars), &out, &errOut); err == nil || !strings.Contains(err.Error(), "ROOST_WS_ADDR") {
		t.Fatalf("dataplane: got %v, want an error naming ROOST_WS_ADDR\n%s", err, errOut.String())
	}
	mustBeFree(t, httpAddr, mqttAddr, forwardAddr)
	store, err := tenants.Open(context.Background(), url, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	nodes, err := store.Nodes(context.Background(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 0 {
		t.Errorf("nodes after a failed start: got %v, want none", nodes)
	}
}

// TestServeEndsItsGoroutines: when its context ends, serve returns only
// after every goroutine of roost's it started has ended: none is left
// running the moment it returns (with the profiler, a WebSocket listener
// and a request served on the way).
func TestServeEndsItsGoroutines(t *testing.T) {
	before := roostGoroutines()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut testenv.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"},
			env(map[string]string{"ROOST_DATA_DIR": t.TempDir()}), &out, &errOut)
	}()
	var url string
	for deadline := time.Now().Add(20 * time.Second); url == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := apiLine.FindStringSubmatch(out.String()); m != nil {
			url = m[1]
		}
	}
	if url == "" {
		cancel()
		t.Fatalf("serve did not start: %v\n%s\n%s", <-done, out.String(), errOut.String())
	}
	client := &http.Client{Transport: &http.Transport{}}
	resp, err := client.Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	client.CloseIdleConnections()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not return within 15s of its context ending")
	}
	for id, stack := range roostGoroutines() {
		// The test's own goroutine that called run may still be on its
		// way out after sending run's result; what run started is created
		// by roost's code, not by the test.
		if strings.Contains(stack, "created by github.com/roosthub/roost/cmd/roost.TestServeEndsItsGoroutines") {
			continue
		}
		if _, ok := before[id]; !ok {
			t.Errorf("goroutine %s still runs after serve returned:\n%s", id, stack)
		}
	}
}

// TestRunWaitsForTasksBeforeClosing: a node's run returns only after its
// tasks have ended, and closes the store only after that: a task still
// using the store after the context ended finds it open.
func TestRunWaitsForTasksBeforeClosing(t *testing.T) {
	c, err := parseConfig(roleAll, []string{"--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"}, env(map[string]string{"ROOST_DATA_DIR": t.TempDir()}))
	if err != nil {
		t.Fatal(err)
	}
	log := newLogger("text", &testenv.Buffer{})
	in, err := readInputs(c, log)
	if err != nil {
		t.Fatal(err)
	}
	n, err := startNode(context.Background(), roleAll, c, in, log, &testenv.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	var ended atomic.Bool
	storeErr := make(chan error, 1)
	n.tasks = append(n.tasks, func(ctx context.Context) error {
		<-ctx.Done()
		time.Sleep(300 * time.Millisecond) // a slow last step
		storeErr <- n.store.Ping(context.Background())
		ended.Store(true)
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.run(ctx) }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if !ended.Load() {
		t.Fatal("run returned before its task ended")
	}
	if err := <-storeErr; err != nil {
		t.Errorf("the store, from a task after the context ended: got %v, want it still open", err)
	}
	if err := n.store.Ping(context.Background()); err == nil {
		t.Error("the store still answers after run returned: want it closed")
	}
}

// freeAddrs returns n distinct loopback addresses free a moment ago (held
// together while chosen, so that none is handed out twice).
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for range n {
		ln := listenFree(t)
		defer ln.Close()
		out = append(out, ln.Addr().String())
	}
	return out
}

// mustBeFree fails the test unless each address can be listened on.
func mustBeFree(t *testing.T, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Errorf("%s is still bound: %v", a, err)
			continue
		}
		ln.Close()
	}
}

var goroutineHead = regexp.MustCompile(`^goroutine (\d+) `)

// roostGoroutines are the goroutines, by id, other than the caller's,
// that run roost's code or were started by it.
func roostGoroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for i, g := range strings.Split(string(buf), "\n\n") {
		m := goroutineHead.FindStringSubmatch(g)
		if i == 0 || m == nil { // the first is the caller's
			continue
		}
		if strings.Contains(g, "github.com/roosthub/roost/") || strings.Contains(g, "\nmain.") || strings.Contains(g, "created by main.") {
			out[m[1]] = g
		}
	}
	return out
}
