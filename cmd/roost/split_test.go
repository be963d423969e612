package main

import (
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/internal/testenv"
)

// TestSplitPlanes runs `roost controlplane` and `roost dataplane` as
// separate processes on a Postgres of the test's own: a device created
// through the control plane's API connects to the data plane within a
// second (even after the data plane cached that it did not exist);
// disabling it ends its connection within a second; while Postgres is down
// the data plane keeps its connected devices, admits a device it knows and
// refuses an unknown one with 0x88 (server unavailable); once Postgres is
// back it recovers by itself and new devices connect.
func TestSplitPlanes(t *testing.T) {
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
	cp.api("POST", "/v1/tenants", session.Token, map[string]string{"slug": "acme"}, nil)

	msgs := make(chan *paho.Publish, 4)
	connack := func(device, secret string, onDisc func(*paho.Disconnect)) (byte, *paho.Client) {
		t.Helper()
		conn, err := net.DialTimeout("tcp", dp.mqttAddr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, OnServerDisconnect: onDisc,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				msgs <- pr.Packet
				return true, nil
			}}})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ca, err := c.Connect(ctx, &paho.Connect{ClientID: device, KeepAlive: 30, CleanStart: true, Username: "acme/" + device,
			UsernameFlag: true, Password: []byte(secret), PasswordFlag: true})
		if ca == nil {
			t.Fatalf("connect %s: no CONNACK: %v\n%s", device, err, dp.log)
		}
		return ca.ReasonCode, c
	}
	// within polls until the device connects, and says how long it took.
	within := func(what string, limit time.Duration, device, secret string) *paho.Client {
		t.Helper()
		start := time.Now()
		for {
			code, c := connack(device, secret, nil)
			if code == 0 {
				t.Logf("%s: connected after %s", what, time.Since(start).Round(time.Millisecond))
				return c
			}
			if time.Since(start) > limit {
				t.Fatalf("%s: still refused (%#x) after %s\n%s", what, code, limit, dp.log)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// The data plane learns that d1 does not exist (and caches it)...
	if code, _ := connack("d1", "not-yet", nil); code != 0x86 {
		t.Fatalf("unknown device: CONNACK %#x, want 0x86", code)
	}
	// ...then the control plane creates it: the change reaches the data
	// plane over Postgres.
	var d1 struct{ Secret string }
	cp.api("POST", "/v1/tenants/acme/devices", session.Token, map[string]string{"name": "d1"}, &d1)
	c1 := within("a device created through the API", time.Second, "d1", d1.Secret)
	c1.Disconnect(&paho.Disconnect{})

	// Disabling it ends its connection.
	discs := make(chan *paho.Disconnect, 1)
	code, c1 := connack("d1", d1.Secret, func(d *paho.Disconnect) { discs <- d })
	if code != 0 {
		t.Fatalf("reconnect: %#x", code)
	}
	start := time.Now()
	cp.api("PATCH", "/v1/tenants/acme/devices/d1", session.Token, map[string]any{"enabled": false}, nil)
	select {
	case d := <-discs:
		t.Logf("a disabled device was disconnected (%#x) after %s", d.ReasonCode, time.Since(start).Round(time.Millisecond))
		if time.Since(start) > time.Second {
			t.Errorf("the kick took %s, more than a second", time.Since(start))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a disabled device stayed connected")
	}
	cp.api("PATCH", "/v1/tenants/acme/devices/d1", session.Token, map[string]any{"enabled": true}, nil)
	within("the device enabled again", time.Second, "d1", d1.Secret).Disconnect(&paho.Disconnect{})
	var d2 struct{ Secret string }
	cp.api("POST", "/v1/tenants/acme/devices", session.Token, map[string]string{"name": "d2"}, &d2)
	lost := make(chan struct{})
	kicked := make(chan byte, 1)
	var lostOnce sync.Once
	code, live := connack("d2", d2.Secret, func(d *paho.Disconnect) {
		kicked <- d.ReasonCode
		lostOnce.Do(func() { close(lost) })
	})
	if code != 0 {
		t.Fatalf("d2: %#x", code)
	}
	defer live.Disconnect(&paho.Disconnect{})
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := live.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "cmd/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	scancel()

	// The control plane asks the data-plane node what only it knows.
	var status struct {
		Online      bool
		Connections []struct {
			ClientID string `json:"client_id"`
		}
	}
	cp.api("GET", "/v1/tenants/acme/devices/d2/status", session.Token, nil, &status)
	if !status.Online || len(status.Connections) != 1 || status.Connections[0].ClientID != "d2" {
		t.Errorf("d2's status through the control plane: %+v", status)
	}
	var evs struct {
		Items []struct{ Type, Device string }
	}
	// The data-plane node stores its events in the directory, off the
	// connection's path; the control plane reads them there.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		cp.api("GET", "/v1/tenants/acme/events?type=connected", session.Token, nil, &evs)
		if len(evs.Items) > 0 && evs.Items[0].Device == "d2" {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the data plane's connect events through the control plane: %+v", evs.Items)
			break
		}
	}
	// The operator's totals count the nodes' connections (d2's).
	var stats struct{ Connections *int }
	cp.api("GET", "/v1/admin/stats", admin, nil, &stats)
	if stats.Connections == nil || *stats.Connections != 1 {
		t.Errorf("connections in the admin stats through the control plane: %v, want 1", stats.Connections)
	}
	cp.api("POST", "/v1/tenants/acme/messages", session.Token, map[string]any{"topic": "cmd/d2", "payload": "reboot", "qos": 1}, nil)
	select {
	case m := <-msgs:
		if m.Topic != "cmd/d2" || string(m.Payload) != "reboot" {
			t.Errorf("d2 got %s %q", m.Topic, m.Payload)
		}
	case <-time.After(5 * time.Second):
		t.Error("a message published through the control plane did not reach the device")
	}

	// Postgres goes away.
	pg.Stop()
	if code, _ := connack("d1", d1.Secret, nil); code != 0 {
		t.Errorf("a known device while Postgres is down: CONNACK %#x, want 0 (served from the cache)", code)
	}
	if code, _ := connack("d9", "unknown", nil); code != 0x88 {
		t.Errorf("an unknown device while Postgres is down: CONNACK %#x, want 0x88 (server unavailable)", code)
	}
	// /readyz's answer may be a second old (one ping a second serves all).
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + dp.httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("data plane /readyz with Postgres down: %v, want 503 within 3s", err)
			break
		}
	}
	select {
	case <-lost:
		t.Fatal("a connected device was dropped because Postgres went away")
	case <-time.After(300 * time.Millisecond):
	}

	// Postgres is back: both planes recover by themselves.
	pg.Start()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + dp.httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the data plane did not recover\n%s", dp.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var d3 struct{ Secret string }
	cp.api("POST", "/v1/tenants/acme/devices", session.Token, map[string]string{"name": "d3"}, &d3)
	within("a device created after Postgres came back", time.Second, "d3", d3.Secret).Disconnect(&paho.Disconnect{})
	select {
	case <-lost:
		t.Error("the connected device was dropped over the outage")
	default:
	}

	// And the control plane can end a connection on the node.
	var closed struct{ Closed int }
	cp.api("POST", "/v1/tenants/acme/devices/d2/disconnect", session.Token, nil, &closed)
	select {
	case code := <-kicked:
		if code != 0x98 {
			t.Errorf("disconnect through the control plane: %#x, want 0x98", code)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("disconnect through the control plane: still connected (closed %d)", closed.Closed)
	}
}
