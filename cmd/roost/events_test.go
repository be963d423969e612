package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// TestServeEventsLastAndStream: on `roost serve`, a viewer key streams a
// real device's message and its connect event; draining the server ends
// the open stream (serve stops in time); after the restart the events are
// still there, and the event metric counts them.
func TestServeEventsLastAndStream(t *testing.T) {
	dir := t.TempDir()
	vars := map[string]string{"ROOST_DATA_DIR": dir}
	h := startServe(t, vars)
	status, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "a@example.com", "password": "correct horse battery"})
	if status != 201 {
		t.Fatalf("signup: %d %v", status, m)
	}
	token := m["token"].(string)
	if status, _ := post(t, h.url+"/v1/tenants", token, map[string]string{"slug": "acme"}); status != 201 {
		t.Fatalf("create tenant: %d", status)
	}
	status, dev := post(t, h.url+"/v1/tenants/acme/devices", token, map[string]string{"name": "d1"})
	if status != 201 {
		t.Fatalf("create device: %d", status)
	}
	status, key := post(t, h.url+"/v1/tenants/acme/api-keys", token, map[string]string{"name": "app", "role": "viewer"})
	if status != 201 {
		t.Fatalf("create key: %d", status)
	}

	req, _ := http.NewRequest("GET", h.url+"/v1/tenants/acme/stream?filter=sensors/%23&events=1", nil)
	req.Header.Set("Authorization", "Bearer "+key["key"].(string))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// waitFor reads the stream until every wanted line has been seen, in
	// any order: a device's message and its connect event travel different
	// paths (the message straight from the broker, the event through the
	// event store), so either may come first.
	type want struct{ what, prefix, contains string }
	waitFor := func(wants ...want) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for len(wants) > 0 {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the stream ended before %s", wants[0].what)
				}
				for i, w := range wants {
					if strings.HasPrefix(l, w.prefix) && strings.Contains(l, w.contains) {
						wants = append(wants[:i], wants[i+1:]...)
						break
					}
				}
			case <-timeout:
				t.Fatalf("no %s in 20s", wants[0].what)
			}
		}
	}
	waitFor(want{"ready", "event: ready", ""})

	c, err := mqttClient(h.mqtt, "acme/d1", dev["secret"].(string), "d1", false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Publish(ctx, &paho.Publish{Topic: "sensors/t", QoS: 1, Payload: []byte("21.5")}); err != nil {
		t.Fatal(err)
	}
	waitFor(want{"the message", "data: ", `"topic":"sensors/t"`},
		want{"the connect event", "data: ", `"type":"connected"`})
	c.Disconnect(&paho.Disconnect{})

	// Draining ends the open stream; serve stops in time.
	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()
	timeout := time.After(15 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-lines:
		case <-timeout:
			t.Fatal("the stream stayed open through the drain")
		}
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop: %v", err)
	}

	h2 := startServe(t, vars)
	var types []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		status, m := get(t, h2.url+"/v1/tenants/acme/events", token)
		if status != 200 {
			t.Fatalf("events after the restart: %d %v", status, m)
		}
		types = types[:0]
		for _, it := range m["items"].([]any) {
			types = append(types, it.(map[string]any)["type"].(string))
		}
		if len(types) >= 2 {
			break
		}
	}
	if strings.Join(types, ",") != "disconnected,connected" {
		t.Errorf("events after the restart: %v, want disconnected,connected", types)
	}
	admin, _ := os.ReadFile(filepath.Join(dir, "admin-token"))
	req, _ = http.NewRequest("GET", h2.url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(admin)))
	mr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mr.Body)
	mr.Body.Close()
	if !strings.Contains(string(body), `roost_events_stored_total{outcome="written"}`) {
		t.Errorf("/metrics lacks roost_events_stored_total")
	}
}
