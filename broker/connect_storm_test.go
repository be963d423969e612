package broker_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/bench/mqttc"
	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/tenants"
)

// countingDirectory is the real directory, counting the tenant and device
// reads that reach it. Each read is held for delay first, as a busy
// database would, so that lookups that miss together overlap.
type countingDirectory struct {
	broker.Directory
	delay time.Duration

	mu      sync.Mutex
	tenants map[string]int
	devices map[string]int // by "<tenant>/<device>"
}

func newCountingDirectory(dir broker.Directory, delay time.Duration) *countingDirectory {
	return &countingDirectory{Directory: dir, delay: delay, tenants: map[string]int{}, devices: map[string]int{}}
}

func (d *countingDirectory) Tenant(ctx context.Context, slug string) (tenants.Tenant, error) {
	d.mu.Lock()
	d.tenants[slug]++
	d.mu.Unlock()
	time.Sleep(d.delay)
	return d.Directory.Tenant(ctx, slug)
}

func (d *countingDirectory) Device(ctx context.Context, tenant, name string) (tenants.Device, error) {
	d.mu.Lock()
	d.devices[tenant+"/"+name]++
	d.mu.Unlock()
	time.Sleep(d.delay)
	return d.Directory.Device(ctx, tenant, name)
}

// reset forgets the reads counted so far.
func (d *countingDirectory) reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tenants, d.devices = map[string]int{}, map[string]int{}
}

func (d *countingDirectory) reads() (tenantReads, deviceReads map[string]int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	tenantReads, deviceReads = map[string]int{}, map[string]int{}
	for k, v := range d.tenants {
		tenantReads[k] = v
	}
	for k, v := range d.devices {
		deviceReads[k] = v
	}
	return tenantReads, deviceReads
}

// newCountingStack is a stack whose hub reads the directory through a
// countingDirectory.
func newCountingStack(t *testing.T, delay time.Duration) (*stack, *countingDirectory) {
	t.Helper()
	var dir *countingDirectory
	s := newStack(t, func(c *broker.Config) {
		dir = newCountingDirectory(c.Directory, delay)
		c.Directory = dir
	})
	return s, dir
}

// settle returns once the hub has applied every directory change made so
// far. Changes reach it in order: once a device created now is admitted
// (its "no such device", cached first, dropped by its change), every
// earlier change has dropped what it made stale too.
func (s *stack) settle(tenant string) {
	s.t.Helper()
	name := fmt.Sprintf("settle-%d", time.Now().UnixNano())
	if _, err := mqttc.Dial(context.Background(), s.addr, mqttc.Options{ClientID: name, Username: user(tenant, name), Password: "x"}); err == nil {
		s.t.Fatalf("%s connected before it existed", name)
	}
	secret := s.device(tenant, name, tenants.ClientIDsAny)
	eventually(s.t, 5*time.Second, "the hub applied the directory's changes", func() bool {
		c, err := mqttc.Dial(context.Background(), s.addr, mqttc.Options{ClientID: name, Username: user(tenant, name), Password: secret})
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// attempt is one connect of a storm.
type attempt struct {
	username, password, clientID string
}

// storm makes every attempt at once, over real sockets, and returns each
// one's error (nil: admitted), in order.
func storm(t *testing.T, addr string, attempts []attempt) []error {
	t.Helper()
	errs := make([]error, len(attempts))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, a := range attempts {
		wg.Go(func() {
			<-start
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := mqttc.Dial(cctx, addr, mqttc.Options{ClientID: a.clientID, Username: a.username, Password: a.password})
			if err == nil {
				c.Close()
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	return errs
}

// TestReconnectStormReadsEachDeviceOnce: 50 devices of one tenant connect
// 4 times each, all at once, with nothing cached: every connect is
// admitted, and the directory is read once for the tenant and at most
// once per device.
func TestReconnectStormReadsEachDeviceOnce(t *testing.T) {
	const devices, each = 50, 4
	s, dir := newCountingStack(t, 20*time.Millisecond)
	s.tenant("storm")
	s.setQuota("storm", "max_connections", 1000)
	secrets := map[string]string{}
	for i := range devices {
		name := fmt.Sprintf("d%02d", i)
		secrets[name] = s.device("storm", name, tenants.ClientIDsAny)
	}
	s.settle("storm")
	// Nothing of the storm's devices is cached: creating each dropped its
	// "no such device", and nothing asked since.
	dir.reset()

	var attempts []attempt
	for name, secret := range secrets {
		for j := range each {
			attempts = append(attempts, attempt{user("storm", name), secret, fmt.Sprintf("%s-%d", name, j)})
		}
	}
	for i, err := range storm(t, s.addr, attempts) {
		if err != nil {
			t.Errorf("%s (%s): %v", attempts[i].username, attempts[i].clientID, err)
		}
	}
	tenantReads, deviceReads := dir.reads()
	if n := tenantReads["storm"]; n > 1 {
		t.Errorf("tenant read %d times, want at most 1", n)
	}
	for name := range secrets {
		if n := deviceReads["storm/"+name]; n > 1 {
			t.Errorf("device %s read %d times by %d concurrent connects, want at most 1", name, n, each)
		}
	}
	sum := func(m map[string]int) (n int) {
		for _, v := range m {
			n += v
		}
		return n
	}
	if t.Failed() {
		t.Log(s.logs.String())
	}
	t.Logf("%d connects: %d tenant reads, %d device reads", len(attempts), sum(tenantReads), sum(deviceReads))
}

// TestStormKeepsTenantsApart: two tenants have a device of the same name,
// each with its own secret, and their devices connect all at once while
// neither is cached: each is admitted with its own tenant's secret only,
// and each tenant's device is read on its own.
func TestStormKeepsTenantsApart(t *testing.T) {
	s, dir := newCountingStack(t, 20*time.Millisecond)
	s.tenant("alpha")
	s.tenant("beta")
	secret := map[string]string{
		"alpha": s.device("alpha", "gw", tenants.ClientIDsAny),
		"beta":  s.device("beta", "gw", tenants.ClientIDsAny),
	}
	s.settle("alpha")
	dir.reset()

	var attempts []attempt
	var want []bool // admitted?
	for j := range 4 {
		for _, tenant := range []string{"alpha", "beta"} {
			other := map[string]string{"alpha": "beta", "beta": "alpha"}[tenant]
			attempts = append(attempts,
				attempt{user(tenant, "gw"), secret[tenant], fmt.Sprintf("own-%d", j)},
				attempt{user(tenant, "gw"), secret[other], fmt.Sprintf("other-%d", j)})
			want = append(want, true, false)
		}
	}
	for i, err := range storm(t, s.addr, attempts) {
		a := attempts[i]
		switch {
		case want[i] && err != nil:
			t.Errorf("%s with its own secret: %v, want admitted", a.username, err)
		case !want[i] && err == nil:
			t.Errorf("%s with the other tenant's secret of a device of the same name: admitted, want refused", a.username)
		case !want[i] && !errors.Is(err, mqttc.ErrRefused):
			t.Errorf("%s with the other tenant's secret: %v, want a refusing CONNACK", a.username, err)
		}
	}
	_, deviceReads := dir.reads()
	for _, tenant := range []string{"alpha", "beta"} {
		if n := deviceReads[tenant+"/gw"]; n != 1 {
			t.Errorf("%s/gw read %d times, want once", tenant, n)
		}
	}
}

// TestStormAfterChange: once the cache holds a device, a rotated secret,
// a disabled device and a deleted device are refused to every connect of
// a storm that follows the change, and a rotated device's new secret is
// admitted.
func TestStormAfterChange(t *testing.T) {
	s, _ := newCountingStack(t, 5*time.Millisecond)
	s.tenant("acme")
	cases := []struct {
		name   string
		change func(name string) (newSecret string, err error)
	}{
		{"rotate", func(n string) (string, error) {
			_, secret, err := s.store.RotateDeviceSecret(ctx, "acme", n)
			return secret, err
		}},
		{"disable", func(n string) (string, error) {
			off := false
			_, err := s.store.UpdateDevice(ctx, "acme", n, tenants.DeviceUpdate{Enabled: &off})
			return "", err
		}},
		{"delete", func(n string) (string, error) { return "", s.store.DeleteDevice(ctx, "acme", n) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := "d-" + tc.name
			old := s.device("acme", name, tenants.ClientIDsAny)
			// The cache holds the device, and a live connection sees the
			// change applied.
			live := mustV5(t, s.addr, user("acme", name), old, name+"-live")
			fresh, err := tc.change(name)
			if err != nil {
				t.Fatal(err)
			}
			waitKicked(t, live, 2*time.Second, tc.name)
			var attempts []attempt
			for j := range 8 {
				attempts = append(attempts, attempt{user("acme", name), old, fmt.Sprintf("%s-old-%d", name, j)})
			}
			for j := range 4 {
				if fresh != "" {
					attempts = append(attempts, attempt{user("acme", name), fresh, fmt.Sprintf("%s-new-%d", name, j)})
				}
			}
			for i, err := range storm(t, s.addr, attempts) {
				a := attempts[i]
				switch {
				case a.password == old && !errors.Is(err, mqttc.ErrRefused):
					t.Errorf("%s with the secret from before the %s: %v, want refused", a.clientID, tc.name, err)
				case a.password == fresh && err != nil:
					t.Errorf("%s with the new secret: %v, want admitted", a.clientID, err)
				}
			}
		})
	}
}

// TestGoroutinesPerConnection: an admitted connection costs the hub two
// goroutines, no more: its own (the ingress admitted it on it, and mochi
// reads its packets on it) and mochi's writer (Client.WriteLoop). The
// connections are raw sockets, so that the test's clients add none.
func TestGoroutinesPerConnection(t *testing.T) {
	const n = 50
	s := newStack(t)
	s.tenant("acme")
	secret := s.device("acme", "gw", tenants.ClientIDsAny)
	dial := func(id string) net.Conn { return connectRaw(t, s.addr, "acme/gw", secret, id) }
	// The first connection starts the tenant's broker, whose goroutines
	// are the tenant's, not a connection's.
	dial("first")
	settled := func() int {
		var last int
		for range 50 {
			time.Sleep(20 * time.Millisecond)
			g := runtime.NumGoroutine()
			if g == last {
				return g
			}
			last = g
		}
		return last
	}
	before := settled()
	for i := range n {
		dial(fmt.Sprintf("c%d", i))
	}
	after := settled()
	per := float64(after-before) / n
	if per > 2 {
		t.Errorf("%.2f goroutines per connection (%d for %d), want 2", per, after-before, n)
	}
	t.Logf("%.2f goroutines per connection", per)
}

// connectRaw connects a raw MQTT 3.1.1 socket as user with client id id and
// reads its accepting CONNACK; the socket closes as the test ends.
func connectRaw(t *testing.T, addr, user, secret, id string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(connectBytes(t, 4, user, secret, id)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != packets.Connack<<4 || ack[3] != 0 {
		t.Fatalf("%s: CONNACK % x, %v; want one accepting it", id, ack, err)
	}
	c.SetDeadline(time.Time{})
	return c
}
