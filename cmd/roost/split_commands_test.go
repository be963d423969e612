package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/internal/testenv"
)

// call makes an API call and returns its status and decoded body, for
// answers that are not successes.
func (p *process) call(method, path, token string, body any) (int, map[string]any) {
	p.t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, "http://"+p.httpAddr+path, rd)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v
}

// TestSplitCommandsAndInspection: with the control plane and the data
// plane in separate processes, a command sent through the control plane's
// API reaches the device on the data-plane node and its reply comes back
// (200), an offline device is 409 device_offline, and retained messages
// (list, get, delete) and a device's session and queue purge are answered
// by the node. It logs the command round trip (p50, p99) for
// docs/benchmarks.md.
func TestSplitCommandsAndInspection(t *testing.T) {
	pg := testenv.StartPostgres(t)
	const admin = "rop_split-test-token-0123456789"
	common := []string{"ROOST_DATABASE_URL=" + pg.URL, "ROOST_ADMIN_TOKEN=" + admin, "ROOST_SESSION_STORE=memory"}
	cp := &process{t: t, role: "controlplane", httpAddr: freeAddr(t)}
	cp.env = append(common, "ROOST_DATA_DIR="+t.TempDir(), "ROOST_HTTP_ADDR="+cp.httpAddr)
	cp.start()
	defer cp.kill()
	dp := &process{t: t, role: "dataplane", httpAddr: freeAddr(t), mqttAddr: freeAddr(t)}
	dp.env = append(common, "ROOST_DATA_DIR="+t.TempDir(), "ROOST_HTTP_ADDR="+dp.httpAddr, "ROOST_MQTT_ADDR="+dp.mqttAddr)
	dp.start()
	defer dp.kill()

	var session struct{ Token string }
	cp.api("POST", "/v1/signup", "", map[string]string{"email": "split@example.com", "password": "correct horse battery"}, &session)
	tok := session.Token
	cp.api("POST", "/v1/tenants", tok, map[string]string{"slug": "acme"}, nil)
	// Lifted so that the round trips below measure the command, not the
	// free plan's rates.
	cp.api("PATCH", "/v1/admin/tenants/acme", admin, map[string]any{"quotas": map[string]any{"tenant_publish_rate": 100000, "publish_rate": 100000}}, nil)
	var d1 struct{ Secret string }
	cp.api("POST", "/v1/tenants/acme/devices", tok, map[string]string{"name": "d1"}, &d1)
	cp.api("POST", "/v1/tenants/acme/devices", tok, map[string]string{"name": "d2"}, nil)

	cmds := make(chan *paho.Publish, 100)
	var c *paho.Client
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err = mqttClient(dp.mqttAddr, "acme/d1", d1.Secret, "d1", false, nil, func(p *paho.Publish) { cmds <- p })
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("d1 did not connect: %v\n%s", err, dp.log)
		}
	}
	defer c.Disconnect(&paho.Disconnect{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$roost/commands/d1/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case m := <-cmds:
				if m.Properties == nil {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c.Publish(ctx, &paho.Publish{Topic: m.Properties.ResponseTopic, QoS: 1, Payload: append([]byte("ok:"), m.Payload...),
					Properties: &paho.PublishProperties{CorrelationData: m.Properties.CorrelationData}})
				cancel()
			}
		}
	}()

	// Commands.
	status, v := cp.call("POST", "/v1/tenants/acme/devices/d1/commands", tok, map[string]any{"name": "reboot", "payload": "now", "timeout": 15})
	if status != 200 || v["payload"] != "ok:now" || v["status"] != "replied" {
		t.Fatalf("command through the control plane: %d %v\n%s", status, v, dp.log)
	}
	if status, v = cp.call("POST", "/v1/tenants/acme/devices/d2/commands", tok, map[string]any{"name": "reboot"}); status != 409 || v["code"] != "device_offline" {
		t.Errorf("command to an offline device: %d %v, want 409 device_offline", status, v)
	}
	// Queued: recorded by the node that published it, its reply by the
	// node the device replied on, both read through the control plane.
	status, v = cp.call("POST", "/v1/tenants/acme/devices/d1/commands", tok, map[string]any{"name": "later", "payload": "q", "queue": true, "ttl": 600})
	if status != 202 || v["expires_at"] == nil {
		t.Fatalf("queued command through the control plane: %d %v", status, v)
	}
	queued := v["id"].(string)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		status, v = cp.call("GET", "/v1/tenants/acme/devices/d1/commands/"+queued, tok, nil)
		if status == 200 && v["status"] == "replied" && v["payload"] == "ok:q" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queued command's reply through the control plane: %d %v\n%s", status, v, dp.log)
		}
	}
	if status, v = cp.call("POST", "/v1/tenants/acme/devices/d2/commands", tok, map[string]any{"name": "later", "queue": true}); status != 202 {
		t.Fatalf("queued command to an offline device: %d %v", status, v)
	}
	if status, v = cp.call("GET", "/v1/tenants/acme/devices/d2/commands/"+v["id"].(string), tok, nil); status != 200 || v["status"] != "queued" {
		t.Errorf("the offline device's queued command: %d %v, want queued", status, v)
	}
	const n = 200
	took := make([]time.Duration, 0, n)
	for i := range n {
		start := time.Now()
		status, v := cp.call("POST", "/v1/tenants/acme/devices/d1/commands", tok, map[string]any{"name": "ping", "payload": "x", "timeout": 15})
		if status != 200 {
			t.Fatalf("command %d: %d %v", i, status, v)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("command round trip via the control plane's API (%d sequential): p50 %s, p99 %s", n,
		took[n/2].Round(10*time.Microsecond), took[n*99/100].Round(10*time.Microsecond))

	// Retained messages, from the tenant's home node.
	cp.api("POST", "/v1/tenants/acme/messages", tok, map[string]any{"topic": "lights/a", "payload": "on", "retain": true, "qos": 1}, nil)
	var list struct{ Items []struct{ Topic string } }
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		cp.api("GET", "/v1/tenants/acme/retained?filter="+url.QueryEscape("#"), tok, nil, &list)
		if len(list.Items) == 1 && list.Items[0].Topic == "lights/a" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retained through the control plane: %+v", list.Items)
		}
	}
	if status, v = cp.call("GET", "/v1/tenants/acme/retained?filter="+url.QueryEscape("$roost/#"), tok, nil); status != 400 || v["field"] != "filter" {
		t.Errorf("a reserved filter through the control plane: %d %v, want 400 on filter", status, v)
	}
	if status, v = cp.call("GET", "/v1/tenants/acme/retained/message?topic=lights/a", tok, nil); status != 200 || v["payload"] != "on" {
		t.Errorf("a retained message through the control plane: %d %v", status, v)
	}
	if status, _ = cp.call("DELETE", "/v1/tenants/acme/retained?topic=lights/a", tok, nil); status != 204 {
		t.Errorf("delete a retained message through the control plane: %d", status)
	}
	if status, v = cp.call("GET", "/v1/tenants/acme/retained/message?topic=lights/a", tok, nil); status != 404 {
		t.Errorf("a deleted retained message: %d %v, want 404", status, v)
	}

	// The device's session.
	var sess struct {
		Sessions []struct {
			ClientID      string `json:"client_id"`
			Connected     bool
			Subscriptions []struct{ Filter string }
		}
	}
	cp.api("GET", "/v1/tenants/acme/devices/d1/session", tok, nil, &sess)
	if len(sess.Sessions) != 1 || !sess.Sessions[0].Connected || len(sess.Sessions[0].Subscriptions) != 1 ||
		sess.Sessions[0].Subscriptions[0].Filter != "$roost/commands/d1/#" {
		t.Errorf("d1's session through the control plane: %+v", sess)
	}
	var purged struct{ Purged *int }
	cp.api("DELETE", "/v1/tenants/acme/devices/d1/session/queue", tok, nil, &purged)
	if purged.Purged == nil || *purged.Purged != 0 {
		t.Errorf("purge through the control plane: %v, want 0", purged.Purged)
	}
	if strings.Contains(dp.log.String(), "panic") {
		t.Errorf("the data plane panicked:\n%s", dp.log)
	}
}
