package broker_test

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/roosthub/roost/broker"
)

// from dials from a loopback address of the test's choosing (on Linux all
// of 127.0.0.0/8 is loopback), so that the hub sees distinct sources.
func from(ip string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
}

// codeV5From connects with MQTT 5 from ip and returns the CONNACK code.
func codeV5From(t *testing.T, ip, addr, username, password, clientID string) byte {
	t.Helper()
	conn, err := from(ip).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	code, err := connackV5(conn, username, password, clientID)
	if err != nil {
		t.Fatalf("MQTT 5 %s from %s: %v", username, ip, err)
	}
	return code
}

// codeV3From connects with MQTT 3.1.1 from ip and returns the CONNACK's
// return code.
func codeV3From(t *testing.T, ip, addr, username, password, clientID string) byte {
	t.Helper()
	c, code, err := dialV3(t, addr, username, password, clientID, true, func(o *paho3.ClientOptions) { o.SetDialer(from(ip)) })
	if err == nil {
		c.Disconnect(0)
	}
	return code
}

func fastThrottle(c *broker.Config) { c.ConnectTimeout = 2 * time.Second }

// TestLockOutAttempt is issue 17's third attack: strangers send wrong
// passwords for acme/sensor-2, ten and more, and keep at it. Their
// failures are throttled; the real device, with its secret, connects
// every time — from another address and from theirs, MQTT 5 and 3.1.1.
func TestLockOutAttempt(t *testing.T) {
	s := newStack(t, fastThrottle)
	s.tenant("acme")
	secret := s.device("acme", "sensor-2")
	for i := range 12 {
		want := byte(0x86)
		if i >= 10 {
			want = 0x9F
		}
		if got := codeV5From(t, "127.0.0.2", s.addr, "acme/sensor-2", "guess", "sensor-2"); got != want {
			t.Errorf("stranger's try %d: got 0x%02x, want 0x%02x", i+1, got, want)
		}
	}
	if got := codeV3From(t, "127.0.0.2", s.addr, "acme/sensor-2", "guess", "sensor-2"); got != 0x03 {
		t.Errorf("stranger's 3.1.1 try: got 0x%02x, want 0x03", got)
	}
	for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		if got := codeV5From(t, ip, s.addr, "acme/sensor-2", secret, "sensor-2"); got != 0 {
			t.Errorf("the device from %s (MQTT 5): got 0x%02x, want 0", ip, got)
		}
		if got := codeV3From(t, ip, s.addr, "acme/sensor-2", secret, "sensor-2"); got != 0 {
			t.Errorf("the device from %s (MQTT 3.1.1): got 0x%02x, want 0", ip, got)
		}
		// One more bad try each time does not lock it out either.
		codeV5From(t, "127.0.0.2", s.addr, "acme/sensor-2", "guess", "sensor-2")
	}
}

// TestLockOutFromEverywhere: a hundred strangers, one wrong password each
// from a hundred addresses, get the username's failures answered 0x9F;
// the device still connects.
func TestLockOutFromEverywhere(t *testing.T) {
	s := newStack(t, fastThrottle)
	s.tenant("acme")
	secret := s.device("acme", "sensor-2")
	for i := range 100 {
		if got := codeV5From(t, fmt.Sprintf("127.0.1.%d", i+1), s.addr, "acme/sensor-2", "guess", "sensor-2"); got != 0x86 {
			t.Fatalf("stranger %d: got 0x%02x, want 0x86", i+1, got)
		}
	}
	if got := codeV5From(t, "127.0.2.1", s.addr, "acme/sensor-2", "guess", "sensor-2"); got != 0x9F {
		t.Errorf("the 101st stranger: got 0x%02x, want 0x9F", got)
	}
	if got := codeV5From(t, "127.0.0.1", s.addr, "acme/sensor-2", secret, "sensor-2"); got != 0 {
		t.Errorf("the device (MQTT 5): got 0x%02x, want 0", got)
	}
	if got := codeV3From(t, "127.0.0.1", s.addr, "acme/sensor-2", secret, "sensor-2"); got != 0 {
		t.Errorf("the device (MQTT 3.1.1): got 0x%02x, want 0", got)
	}
}

// TestFailuresBehindNAT: many failures from one address (a NAT, a balancer
// without PROXY protocol) throttle that address's failures, never another
// tenant's device with valid credentials from the same address.
func TestFailuresBehindNAT(t *testing.T) {
	// 60 directory reads at once, each bounded by the CONNECT timeout:
	// under the race detector on two busy cores some took past 2 s
	// (0x88), so this one gives them longer — short of the clients' own
	// 5 s, which the throttled answers wait for at most.
	s := newStack(t, func(c *broker.Config) { c.ConnectTimeout = 4 * time.Second })
	s.tenant("acme")
	s.tenant("other")
	secret := s.device("other", "d1")
	var wg sync.WaitGroup
	codes := make(chan byte, 60)
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes <- codeV5From(t, "127.0.0.3", s.addr, fmt.Sprintf("acme/sensor-%d", i), "wrong", fmt.Sprintf("sensor-%d", i))
		}()
	}
	wg.Wait()
	close(codes)
	counts := map[byte]int{}
	for c := range codes {
		counts[c]++
	}
	if counts[0x86] != 50 || counts[0x9F] != 10 {
		t.Errorf("60 failures from one address: got %v, want 50 × 0x86 then 10 × 0x9F", counts)
	}
	if got := codeV5From(t, "127.0.0.3", s.addr, "other/d1", secret, "d1"); got != 0 {
		t.Errorf("another tenant's device behind the NAT (MQTT 5): got 0x%02x, want 0", got)
	}
	if got := codeV3From(t, "127.0.0.3", s.addr, "other/d1", secret, "d1"); got != 0 {
		t.Errorf("another tenant's device behind the NAT (MQTT 3.1.1): got 0x%02x, want 0", got)
	}
	if got := codeV5From(t, "127.0.0.3", s.addr, "other/d1", "wrong", "d1"); got != 0x9F {
		t.Errorf("a failure from the NAT after that: got 0x%02x, want 0x9F (a success does not clear the address)", got)
	}
}

// TestGuesserSlowed: a guesser from one address gets 0x9F (3.1.1: 0x03)
// once its ten free failures are spent, answered late; its own success
// (it had the secret after all) ends its streak.
func TestGuesserSlowed(t *testing.T) {
	s := newStack(t, fastThrottle)
	s.tenant("acme")
	secret := s.device("acme", "d1")
	for range 10 {
		codeV5From(t, "127.0.0.4", s.addr, "acme/d1", "guess", "d1")
	}
	for i := range 3 {
		start := time.Now()
		if got := codeV5From(t, "127.0.0.4", s.addr, "acme/d1", "guess", "d1"); got != 0x9F {
			t.Errorf("guess %d past the free ones: got 0x%02x, want 0x9F", 11+i, got)
		}
		if d := time.Since(start); d < 900*time.Millisecond {
			t.Errorf("guess %d past the free ones answered after %v, want it held for its delay (1s and more)", 11+i, d)
		}
	}
	if got := codeV3From(t, "127.0.0.4", s.addr, "acme/d1", "guess", "d1"); got != 0x03 {
		t.Errorf("3.1.1 guess: got 0x%02x, want 0x03", got)
	}
	if got := codeV5From(t, "127.0.0.4", s.addr, "acme/d1", secret, "d1"); got != 0 {
		t.Fatalf("the secret: got 0x%02x, want 0", got)
	}
	if got := codeV5From(t, "127.0.0.4", s.addr, "acme/d1", "typo", "d1"); got != 0x86 {
		t.Errorf("a failure after the success: got 0x%02x, want 0x86 (the streak ended)", got)
	}
}
