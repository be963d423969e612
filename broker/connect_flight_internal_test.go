package broker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// deviceDirectory answers device reads with a function; nothing else of
// the directory is asked in these tests.
type deviceDirectory struct {
	Directory
	device func(ctx context.Context, tenant, name string) (tenants.Device, error)
}

func (d deviceDirectory) Device(ctx context.Context, tenant, name string) (tenants.Device, error) {
	return d.device(ctx, tenant, name)
}

// TestLookupAfterInvalidationReadsAgain: a device read in flight when the
// device changes is not shared with a lookup that starts after the change,
// nor cached; the read that follows the change is. (No real directory can
// be held in the middle of a read, hence the function.)
func TestLookupAfterInvalidationReadsAgain(t *testing.T) {
	var reads atomic.Int32
	started, release := make(chan struct{}), make(chan struct{})
	dir := deviceDirectory{device: func(ctx context.Context, tenant, name string) (tenants.Device, error) {
		if reads.Add(1) == 1 {
			close(started)
			<-release
			return tenants.Device{Tenant: tenant, Name: name, SecretHash: "old"}, nil
		}
		return tenants.Device{Tenant: tenant, Name: name, SecretHash: "new"}, nil
	}}
	c := newDirectoryCache(dir, 100, time.Hour, time.Second, time.Now)

	first := make(chan string)
	go func() {
		d, _, _ := c.device(context.Background(), "acme", "gw")
		first <- d.SecretHash
	}()
	<-started
	c.invalidate(tenants.Change{Kind: tenants.DeviceChanged, Tenant: "acme", Device: "gw"})
	d, found, err := c.device(context.Background(), "acme", "gw")
	if err != nil || !found || d.SecretHash != "new" {
		t.Fatalf("lookup after the change: got %q, %v, %v; want the device as it is now (new)", d.SecretHash, found, err)
	}
	close(release)
	<-first // the raced read: its answer is its own
	if d, _, _ := c.device(context.Background(), "acme", "gw"); d.SecretHash != "new" {
		t.Errorf("cached after the raced read finished: got %q, want new", d.SecretHash)
	}
	if n := reads.Load(); n != 2 {
		t.Errorf("directory read %d times, want 2 (one before the change, one after)", n)
	}
}

// TestLookupGivesUpWithItsContext: a lookup waiting for a shared read
// returns when its own context ends; the read goes on for the others, and
// its answer is cached.
func TestLookupGivesUpWithItsContext(t *testing.T) {
	release := make(chan struct{})
	var reads atomic.Int32
	dir := deviceDirectory{device: func(ctx context.Context, tenant, name string) (tenants.Device, error) {
		reads.Add(1)
		<-release
		return tenants.Device{Tenant: tenant, Name: name, SecretHash: "h"}, nil
	}}
	c := newDirectoryCache(dir, 100, time.Hour, 5*time.Second, time.Now)
	shed, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error)
	go func() {
		_, _, err := c.device(shed, "acme", "gw")
		gaveUp <- err
	}()
	waiting := make(chan string)
	go func() {
		d, _, _ := c.device(context.Background(), "acme", "gw")
		waiting <- d.SecretHash
	}()
	for reads.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-gaveUp:
		if err == nil {
			t.Error("the lookup whose context ended: no error")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the lookup whose context ended still waits for the read")
	}
	close(release)
	if h := <-waiting; h != "h" {
		t.Errorf("the other lookup: got %q, want h", h)
	}
	if d, _, _ := c.device(context.Background(), "acme", "gw"); d.SecretHash != "h" || reads.Load() != 1 {
		t.Errorf("after the read: got %q with %d reads, want h with 1", d.SecretHash, reads.Load())
	}
}

// TestLookupHitAllocatesNothing: every connect looks its tenant and device
// up twice (admission, then mochi's OnConnect); answered from the cache,
// that costs no allocation.
func TestLookupHitAllocatesNothing(t *testing.T) {
	dir := deviceDirectory{device: func(ctx context.Context, tenant, name string) (tenants.Device, error) {
		return tenants.Device{Tenant: tenant, Name: name, SecretHash: "h", Enabled: true}, nil
	}}
	c := newDirectoryCache(dir, 100, time.Hour, time.Second, time.Now)
	ctx := context.Background()
	if _, found, err := c.device(ctx, "acme", "gw"); !found || err != nil {
		t.Fatalf("first lookup: found %v, err %v", found, err)
	}
	if n := testing.AllocsPerRun(100, func() { c.device(ctx, "acme", "gw") }); n != 0 {
		t.Errorf("a cached lookup allocates %v times, want 0", n)
	}
}
