package main

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// silentAttempts opens n TCP connections from the loopback address ip to
// addr, all before any is looked at, sends nothing on them, and returns
// how many the server closed (or reset) within closedWithin and how many
// it left open. A refused attempt is closed as it is accepted; an admitted
// one waits for its CONNECT until --connect-timeout, far longer.
func silentAttempts(t *testing.T, ip, addr string, n int, closedWithin time.Duration) (closed, open int) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	var conns []net.Conn
	for range n {
		c, err := d.Dial("tcp", addr)
		if errors.Is(err, syscall.ECONNRESET) {
			closed++ // reset before the dial returned: refused at once too
			continue
		}
		if err != nil {
			t.Fatalf("dial %s from %s: %v", addr, ip, err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(closedWithin))
			_, err := c.Read(make([]byte, 1))
			var ne net.Error
			timedOut := errors.As(err, &ne) && ne.Timeout()
			mu.Lock()
			defer mu.Unlock()
			if err != nil && !timedOut {
				closed++
			} else {
				open++
			}
		})
	}
	wg.Wait()
	return closed, open
}

// TestServeAttemptRatePerAddress: `roost serve` takes
// ROOST_HANDSHAKE_RATE_PER_ADDRESS and its burst to its MQTT listener:
// silent attempts from one address past the burst are closed as they are
// accepted, while a real MQTT 5 client from another address connects; with
// the rate 0 there is no bound and every attempt waits for its CONNECT.
// (The broker's own tests check the limit in detail; this checks that the
// binary's configuration reaches it.)
func TestServeAttemptRatePerAddress(t *testing.T) {
	for _, tc := range []struct {
		rate       string
		wantClosed func(closed, open int) bool
		want       string
	}{
		// The burst of 3, and at most a token more refilled while dialing.
		{"1", func(closed, open int) bool { return open >= 3 && open <= 4 && closed >= 8 }, "the burst of 3 open, the rest closed at once"},
		{"0", func(closed, open int) bool { return open == 12 && closed == 0 }, "every one open (no bound)"},
	} {
		t.Run("rate="+tc.rate, func(t *testing.T) {
			h := startServe(t, map[string]string{"ROOST_DATA_DIR": t.TempDir(),
				"ROOST_HANDSHAKE_RATE_PER_ADDRESS": tc.rate, "ROOST_HANDSHAKE_BURST_PER_ADDRESS": "3"})
			_, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "a@example.com", "password": "correct horse battery"})
			token := m["token"].(string)
			post(t, h.url+"/v1/tenants", token, map[string]string{"slug": "acme"})
			status, m := post(t, h.url+"/v1/tenants/acme/devices", token, map[string]string{"name": "d1"})
			if status != 201 {
				t.Fatalf("create device: %d %v", status, m)
			}
			secret := m["secret"].(string)

			// Refused attempts close within milliseconds; 3 s leaves room
			// for a busy machine and is far short of the 10 s CONNECT
			// timeout that would close an admitted one.
			closed, open := silentAttempts(t, "127.0.0.2", h.mqtt, 12, 3*time.Second)
			if !tc.wantClosed(closed, open) {
				t.Errorf("of 12 silent attempts from one address: %d left open, %d closed at once; want %s", open, closed, tc.want)
			}

			// A device from another address connects meanwhile.
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: 5 * time.Second}
			conn, err := d.Dial("tcp", h.mqtt)
			if err != nil {
				t.Fatal(err)
			}
			c := paho.NewClient(paho.ClientConfig{Conn: conn})
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			ca, err := c.Connect(ctx, &paho.Connect{ClientID: "d1", KeepAlive: 30, CleanStart: true,
				Username: "acme/d1", UsernameFlag: true, Password: []byte(secret), PasswordFlag: true})
			if err != nil || ca.ReasonCode != 0 {
				t.Fatalf("a device from another address: CONNACK %v, %v; want accepted", ca, err)
			}
			c.Disconnect(&paho.Disconnect{})
		})
	}
}
