package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/cluster"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// TestFleetScript starts a control plane and two data-plane nodes with
// scripts/fleet.sh (its own Postgres and Redis), and checks what it prints
// and what it started:
//
//  1. A tenant's devices on node 1 and node 2 meet: a QoS 1 message
//     published on one reaches a subscriber on the other.
//  2. Node 2, the tenant's home (the test picks a tenant that rendezvous
//     hashing places there), is killed with SIGKILL at the PID the script
//     printed: a device still connects through node 1 within 8 s (once the
//     dead home's lease in Redis lapsed, 4 s, node 1 takes the tenant,
//     though the directory still counts node 2 as up) and its messages
//     flow.
//  3. `fleet.sh restart-node 2` brings node 2 back on its ports under a new
//     PID, and devices on both nodes meet again.
//  4. `fleet.sh stop` ends every process and removes the state directory.
func TestFleetScript(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		testenv.Require(t, "redis-server is not installed (apt-get install redis-server): scripts/fleet.sh starts one")
	}
	if bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb"); len(bins) == 0 {
		testenv.Require(t, "postgresql is not installed (apt-get install postgresql): scripts/fleet.sh starts one")
	}
	for _, tool := range []string{"bash", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Require(t, tool+" is not installed: scripts/fleet.sh needs it")
		}
	}
	began := time.Now()
	bin := roostBinary(t)
	script, err := filepath.Abs("../../scripts/fleet.sh")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "fleet")
	env := append(os.Environ(), "ROOST_FLEET_DIR="+dir, "ROOST_BIN="+bin,
		"ROOST_FLEET_NODE_ENV=ROOST_LOG_FORMAT=json ROOST_DRAIN_TIMEOUT=5s")
	fleet := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		// The processes it leaves running must not hold its output open.
		cmd.WaitDelay = 5 * time.Second
		start := time.Now()
		err := cmd.Run()
		t.Logf("fleet.sh %s (%s):\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), stderr.String())
		return stdout.String(), err
	}
	// logs are the processes' logs, for failures.
	logs := func() string {
		var b strings.Builder
		files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		for _, f := range files {
			data, _ := os.ReadFile(f)
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			fmt.Fprintf(&b, "--- %s (last lines)\n%s\n", filepath.Base(f), strings.Join(lines[max(0, len(lines)-25):], "\n"))
		}
		return b.String()
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(logs())
		}
		if _, err := fleet("stop"); err != nil {
			t.Errorf("fleet.sh stop: %v", err)
		}
	})

	out, err := fleet("start", "2")
	if err != nil {
		t.Fatalf("fleet.sh start 2: %v\nstdout:\n%s\n%s", err, out, logs())
	}
	vars := parseExports(t, out)
	for _, k := range []string{"ROOST_API_URL", "ROOST_ADMIN_TOKEN", "ROOST_FLEET_DATABASE_URL", "ROOST_FLEET_REDIS_URL",
		"ROOST_NODE1_MQTT", "ROOST_NODE1_HTTP", "ROOST_NODE1_PID", "ROOST_NODE2_MQTT", "ROOST_NODE2_HTTP", "ROOST_NODE2_PID"} {
		if vars[k] == "" {
			t.Errorf("fleet.sh start printed no %s:\n%s", k, out)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	pid := func(name string) int {
		t.Helper()
		n, err := strconv.Atoi(vars[name])
		if err != nil {
			t.Fatalf("%s=%q is not a PID", name, vars[name])
		}
		return n
	}
	for _, name := range []string{"ROOST_NODE1_PID", "ROOST_NODE2_PID"} {
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid(name))); !bytes.Equal(cmdline, []byte(bin+"\x00dataplane\x00")) {
			t.Errorf("%s is not a roost dataplane process: its command line is %q", name, cmdline)
		}
	}
	// ROOST_FLEET_NODE_ENV reached the nodes.
	if log, _ := os.ReadFile(filepath.Join(dir, "node1.log")); !bytes.Contains(log, []byte(`"msg":"serving"`)) {
		t.Errorf("node 1 does not log JSON (ROOST_FLEET_NODE_ENV=ROOST_LOG_FORMAT=json):\n%s", log)
	}

	api, admin := vars["ROOST_API_URL"], vars["ROOST_ADMIN_TOKEN"]
	call := func(method, path, token string, body, out any) {
		t.Helper()
		var rd *bytes.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		} else {
			rd = bytes.NewReader(nil)
		}
		req, _ := http.NewRequest(method, api+path, rd)
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		var raw json.RawMessage
		json.NewDecoder(resp.Body).Decode(&raw)
		if resp.StatusCode >= 300 {
			t.Fatalf("%s %s: %s %s", method, path, resp.Status, raw)
		}
		if out != nil {
			if err := json.Unmarshal(raw, out); err != nil {
				t.Fatalf("%s %s: %v in %s", method, path, err, raw)
			}
		}
	}
	type nodeStats struct {
		ID, URL string
		Tenants int
	}
	stats := func() []nodeStats {
		var s struct{ Nodes []nodeStats }
		call("GET", "/v1/admin/stats", admin, nil, &s)
		return s.Nodes
	}
	nodeName := func(url string) string {
		for _, i := range []string{"1", "2"} {
			if url == vars["ROOST_NODE"+i+"_HTTP"] {
				return "node " + i
			}
		}
		return url
	}

	// A tenant whose home, by rendezvous hashing over the two nodes, is
	// node 2: its death then makes node 1 take the tenant over.
	nodes := stats()
	if len(nodes) != 2 {
		t.Fatalf("the control plane sees %d data-plane nodes, want 2: %+v", len(nodes), nodes)
	}
	var fleetNodes []tenants.Node
	for _, n := range nodes {
		fleetNodes = append(fleetNodes, tenants.Node{ID: n.ID, URL: n.URL})
	}
	slug := ""
	for i := 0; slug == ""; i++ {
		s := fmt.Sprintf("fleet-%d", i)
		if n, _ := cluster.Pick(s, fleetNodes); n.URL == vars["ROOST_NODE2_HTTP"] {
			slug = s
		}
	}
	var session struct{ Token string }
	call("POST", "/v1/signup", "", map[string]string{"email": "fleet@example.com", "password": "correct horse battery"}, &session)
	call("POST", "/v1/tenants", session.Token, map[string]string{"slug": slug}, nil)
	call("PATCH", "/v1/admin/tenants/"+slug, admin,
		map[string]any{"quotas": map[string]int64{"publish_rate": 1_000_000, "tenant_publish_rate": 1_000_000}}, nil)
	var sub, pub struct{ Secret string }
	call("POST", "/v1/tenants/"+slug+"/devices", session.Token, map[string]string{"name": "sub"}, &sub)
	call("POST", "/v1/tenants/"+slug+"/devices", session.Token, map[string]string{"name": "pub"}, &pub)

	got := make(chan string, 16)
	connect := func(node, device, secret string) (*paho.Client, error) {
		return mqttClient(vars["ROOST_NODE"+node+"_MQTT"], slug+"/"+device, secret, device, false, nil,
			func(m *paho.Publish) { got <- m.Topic + " " + string(m.Payload) })
	}
	mustConnect := func(node, device, secret string) *paho.Client {
		t.Helper()
		c, err := connect(node, device, secret)
		if err != nil {
			t.Fatalf("%s through node %s: %v", device, node, err)
		}
		return c
	}
	// meet subscribes through one node and publishes QoS 1 through the
	// other, and waits for the message.
	meet := func(subClient *paho.Client, pubNode, payload string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := subClient.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "fleet/#", QoS: 1}}}); err != nil {
			t.Fatalf("subscribe: %v", err)
		}
		pc := mustConnect(pubNode, "pub", pub.Secret)
		defer pc.Disconnect(&paho.Disconnect{})
		if _, err := pc.Publish(ctx, &paho.Publish{Topic: "fleet/test", QoS: 1, Payload: []byte(payload)}); err != nil {
			t.Fatalf("publish through node %s: %v", pubNode, err)
		}
		select {
		case m := <-got:
			if m != "fleet/test "+payload {
				t.Errorf("the subscriber got %q, want fleet/test %s", m, payload)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%q published through node %s did not reach the subscriber", payload, pubNode)
		}
	}

	// 1. Node 1 and node 2 meet.
	sc := mustConnect("1", "sub", sub.Secret)
	meet(sc, "2", "one")
	for _, n := range stats() {
		if n.Tenants > 0 {
			t.Logf("the tenant %s lives on %s", slug, nodeName(n.URL))
		}
	}

	// 2. Node 2 dies; node 1 takes devices within 8 s.
	if err := syscall.Kill(pid("ROOST_NODE2_PID"), syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 node 2: %v", err)
	}
	killed := time.Now()
	sc.Disconnect(&paho.Disconnect{})
	for {
		c, err := connect("1", "sub", sub.Secret)
		if err == nil {
			sc = c
			break
		}
		if time.Since(killed) > 8*time.Second {
			t.Fatalf("no device connects through node 1 8 s after node 2 was killed (its lease is 4 s): %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("a device connected through node 1 %s after node 2 was killed", time.Since(killed).Round(time.Millisecond))
	meet(sc, "1", "two")

	// 3. Node 2 comes back.
	out, err = fleet("restart-node", "2")
	if err != nil {
		t.Fatalf("fleet.sh restart-node 2: %v\n%s", err, logs())
	}
	again := parseExports(t, out)
	if again["ROOST_NODE2_PID"] == "" || again["ROOST_NODE2_PID"] == vars["ROOST_NODE2_PID"] || len(again) != 1 {
		t.Fatalf("fleet.sh restart-node 2 printed %q, want one export of node 2's new PID", out)
	}
	vars["ROOST_NODE2_PID"] = again["ROOST_NODE2_PID"]
	if syscall.Kill(pid("ROOST_NODE2_PID"), 0) != nil {
		t.Fatalf("node 2's new PID %s does not run", vars["ROOST_NODE2_PID"])
	}
	meet(sc, "2", "three")
	sc.Disconnect(&paho.Disconnect{})

	// 4. Stop ends the processes and removes the directory.
	pids := []int{pid("ROOST_NODE1_PID"), pid("ROOST_NODE2_PID")}
	if _, err := fleet("stop"); err != nil {
		t.Fatalf("fleet.sh stop: %v", err)
	}
	for _, p := range pids {
		if running(p) {
			t.Errorf("pid %d still runs after fleet.sh stop", p)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("fleet.sh stop left %s (%v)", dir, err)
	}
	t.Logf("the whole test took %s", time.Since(began).Round(time.Millisecond))
}

var exportLine = regexp.MustCompile(`^export ([A-Z][A-Z0-9_]*)=(.*)$`)

// parseExports reads the `export NAME=value` lines a fleet.sh command
// printed (values single-quoted or bare); any other line fails the test,
// since the output is meant for eval.
func parseExports(t *testing.T, out string) map[string]string {
	t.Helper()
	vars := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		m := exportLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("fleet.sh printed %q on stdout, which is not an export line:\n%s", line, out)
		}
		v := m[2]
		if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			v = strings.ReplaceAll(v[1:len(v)-1], `'\''`, `'`)
		}
		vars[m[1]] = v
	}
	return vars
}

// running reports whether a process runs (a zombie, which no one may reap
// in a container, does not).
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}
