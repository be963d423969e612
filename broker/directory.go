package broker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/internal/lru"
	"github.com/roosthub/roost/tenants"
)

// Directory is what the data plane reads of the control plane's directory.
// *tenants.Store satisfies it.
type Directory interface {
	Tenant(ctx context.Context, slug string) (tenants.Tenant, error)
	Device(ctx context.Context, tenant, name string) (tenants.Device, error)
	ACLRules(ctx context.Context, tenant string) ([]tenants.ACLRule, error)
	ExportRules(ctx context.Context, tenant string) ([]tenants.ExportRule, error)
	DeviceKeys(ctx context.Context, tenant, device string) ([]tenants.DeviceKey, error)
	CAs(ctx context.Context, tenant string) ([]tenants.CA, error)
	DeviceCertificates(ctx context.Context, tenant, device string) ([]tenants.DeviceCertificate, error)
	TouchDevice(ctx context.Context, tenant, name string, t time.Time) error
	// ProvisionDevice registers an unknown device on its first connection
	// with a certificate under a CA the tenant marked for provisioning.
	ProvisionDevice(ctx context.Context, tenant, name, caFingerprint string) (tenants.Device, bool, error)
}

var _ Directory = (*tenants.Store)(nil)

// cached is a directory answer: a value, or the fact that there is none.
type cached[T any] struct {
	val   T
	found bool
	at    time.Time
}

type deviceKey struct{ tenant, name string }

// directoryCache keeps recent tenant and device answers, including "no such
// tenant/device", so that a flood of connects with made-up names does not
// reach the database. Change events drop entries as soon as the control
// plane commits; the TTL bounds staleness should an event ever be missed.
//
// A miss is read once however many ask at the same moment: a reconnect
// storm of a tenant's devices, each connecting several times over, reads
// each device once (and the tenant once). Every entry and every read in
// flight is keyed by the whole key, the tenant with the device, so no
// tenant is ever given another's answer.
type directoryCache struct {
	dir Directory
	ttl time.Duration
	now func() time.Time
	// readTimeout bounds one read of the directory. A read is shared by
	// every connection that waits for it, so it does not end with the
	// one that started it.
	readTimeout time.Duration

	mu sync.Mutex
	// gen is bumped by every invalidation, with mu held; a read that raced
	// one is neither cached nor shared with later lookups. It is read
	// without mu by the connections' read decisions (see mayReceive).
	gen     atomic.Uint64
	tenants table[string, tenants.Tenant]
	devices table[deviceKey, tenants.Device]
	keys    table[deviceKey, []tenants.DeviceKey]
	certs   table[deviceKey, []tenants.DeviceCertificate]
	cas     table[string, []tenants.CA]
}

// table is one kind of answer: those kept, and the reads in flight.
type table[K comparable, T any] struct {
	lru     *lru.Cache[K, cached[T]]
	flights map[K]*flight[T]
}

func newTable[K comparable, T any](size int) table[K, T] {
	return table[K, T]{lru: lru.New[K, cached[T]](size), flights: map[K]*flight[T]{}}
}

// flight is a read of the directory in progress; done is closed once val,
// found and err are set.
type flight[T any] struct {
	gen   uint64
	done  chan struct{}
	val   T
	found bool
	err   error
}

func newDirectoryCache(dir Directory, size int, ttl, readTimeout time.Duration, now func() time.Time) *directoryCache {
	return &directoryCache{
		dir: dir, ttl: ttl, now: now, readTimeout: readTimeout,
		tenants: newTable[string, tenants.Tenant](max(size/10, 100)),
		devices: newTable[deviceKey, tenants.Device](size),
		keys:    newTable[deviceKey, []tenants.DeviceKey](max(size/10, 100)),
		certs:   newTable[deviceKey, []tenants.DeviceCertificate](max(size/10, 100)),
		cas:     newTable[string, []tenants.CA](max(size/10, 100)),
	}
}

// lookup returns a cached answer or fetches, caches and returns a fresh one.
// found is false when the directory has no such object; err is for failures.
//
// Lookups of one key that miss together share one fetch. It runs on its
// own goroutine, bounded by readTimeout, so that a caller that gives up
// (its ctx ends: its connection was shed) leaves it to the others. A
// lookup that comes after an invalidation never joins a fetch that began
// before it. A caller whose ctx has no deadline waits readTimeout at
// most: a hit, the common case, sets no timer.
//
// fetch reads key from the directory. It captures nothing (the key is
// passed to it, and it has the shape of a method expression such as
// Directory.Tenant), so that a lookup the cache answers allocates nothing.
func lookup[K comparable, T any](ctx context.Context, c *directoryCache, t *table[K, T], key K, fetch func(Directory, context.Context, K) (T, error)) (T, bool, error) {
	c.mu.Lock()
	e, ok := t.lru.Get(key)
	if ok && c.now().Sub(e.at) < c.ttl {
		c.mu.Unlock()
		return e.val, e.found, nil
	}
	f := t.flights[key]
	if f == nil || f.gen != c.gen.Load() {
		f = &flight[T]{gen: c.gen.Load(), done: make(chan struct{})}
		t.flights[key] = f
		go fly(ctx, c, t, key, f, fetch)
	}
	c.mu.Unlock()

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.readTimeout)
		defer cancel()
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		var zero T
		return zero, false, ctx.Err()
	}
	if f.err != nil {
		if ok {
			// The directory is unreachable: an answer past its TTL beats
			// refusing a device that connected a minute ago. Changes
			// still drop entries, so nothing revoked is served.
			return e.val, e.found, nil
		}
		var zero T
		return zero, false, f.err
	}
	return f.val, f.found, nil
}

// fly runs a shared fetch and caches its answer, unless an invalidation
// came in between.
func fly[K comparable, T any](ctx context.Context, c *directoryCache, t *table[K, T], key K, f *flight[T], fetch func(Directory, context.Context, K) (T, error)) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.readTimeout)
	v, err := fetch(c.dir, ctx, key)
	cancel()
	found := err == nil
	if errors.Is(err, tenants.ErrNotFound) {
		err = nil
	}
	c.mu.Lock()
	if t.flights[key] == f {
		delete(t.flights, key)
	}
	if err == nil && c.gen.Load() == f.gen {
		t.lru.Add(key, cached[T]{val: v, found: found, at: c.now()})
	}
	f.val, f.found, f.err = v, found, err
	c.mu.Unlock()
	close(f.done)
}

func (c *directoryCache) tenant(ctx context.Context, slug string) (tenants.Tenant, bool, error) {
	return lookup(ctx, c, &c.tenants, slug, Directory.Tenant)
}

func (c *directoryCache) device(ctx context.Context, tenant, name string) (tenants.Device, bool, error) {
	return lookup(ctx, c, &c.devices, deviceKey{tenant, name}, func(dir Directory, ctx context.Context, k deviceKey) (tenants.Device, error) {
		return dir.Device(ctx, k.tenant, k.name)
	})
}

// deviceKeys are the public keys a device signs its tokens with.
func (c *directoryCache) deviceKeys(ctx context.Context, tenant, name string) ([]tenants.DeviceKey, error) {
	keys, _, err := lookup(ctx, c, &c.keys, deviceKey{tenant, name}, func(dir Directory, ctx context.Context, k deviceKey) ([]tenants.DeviceKey, error) {
		return dir.DeviceKeys(ctx, k.tenant, k.name)
	})
	return keys, err
}

// certificates are the client certificates pinned to a device.
func (c *directoryCache) certificates(ctx context.Context, tenant, name string) ([]tenants.DeviceCertificate, error) {
	certs, _, err := lookup(ctx, c, &c.certs, deviceKey{tenant, name}, func(dir Directory, ctx context.Context, k deviceKey) ([]tenants.DeviceCertificate, error) {
		return dir.DeviceCertificates(ctx, k.tenant, k.name)
	})
	return certs, err
}

// authorities are the CAs a tenant trusts for its devices.
func (c *directoryCache) authorities(ctx context.Context, tenant string) ([]tenants.CA, error) {
	cas, _, err := lookup(ctx, c, &c.cas, tenant, Directory.CAs)
	return cas, err
}

// invalidate drops what a change makes stale.
func (c *directoryCache) invalidate(ch tenants.Change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	switch ch.Kind {
	case tenants.TenantChanged:
		c.tenants.lru.Remove(ch.Tenant)
	case tenants.TenantDeleted:
		c.tenants.lru.Remove(ch.Tenant)
		c.devices.lru.RemoveIf(func(k deviceKey) bool { return k.tenant == ch.Tenant })
		c.keys.lru.RemoveIf(func(k deviceKey) bool { return k.tenant == ch.Tenant })
		c.certs.lru.RemoveIf(func(k deviceKey) bool { return k.tenant == ch.Tenant })
		c.cas.lru.Remove(ch.Tenant)
	case tenants.DeviceChanged:
		c.devices.lru.Remove(deviceKey{ch.Tenant, ch.Device})
		c.keys.lru.Remove(deviceKey{ch.Tenant, ch.Device})
		c.certs.lru.Remove(deviceKey{ch.Tenant, ch.Device})
	case tenants.DevicesImported:
		// New devices have no connections: only answers are dropped.
		c.devices.lru.RemoveIf(func(k deviceKey) bool { return k.tenant == ch.Tenant })
		c.keys.lru.RemoveIf(func(k deviceKey) bool { return k.tenant == ch.Tenant })
		c.certs.lru.RemoveIf(func(k deviceKey) bool { return k.tenant == ch.Tenant })
	case tenants.CAChanged:
		c.cas.lru.Remove(ch.Tenant)
	case tenants.Resync:
		all := func(deviceKey) bool { return true }
		c.tenants.lru.RemoveIf(func(string) bool { return true })
		c.devices.lru.RemoveIf(all)
		c.keys.lru.RemoveIf(all)
		c.certs.lru.RemoveIf(all)
		c.cas.lru.RemoveIf(func(string) bool { return true })
	}
}

// qualifies is the one rule for whether an admitted connection may go on:
// its tenant exists and is not suspended, its device exists and is
// enabled, what it was admitted with still stands (see credentialStands),
// and its client id is still the one the device is bound to. It returns
// nil or the refusal, and an error when the directory did not answer.
func (c *directoryCache) qualifies(ctx context.Context, id identity, clientID string) (*refusal, error) {
	t, found, err := c.tenant(ctx, id.tenant)
	if err != nil {
		return nil, err
	}
	if ref := tenantQualifies(t, found); ref != nil {
		return ref, nil
	}
	d, found, err := c.device(ctx, id.tenant, id.device)
	if err != nil {
		return nil, err
	}
	if !found || !d.Enabled {
		return &badCredentials, nil
	}
	stands, err := c.credentialStands(ctx, id, d)
	switch {
	case err != nil:
		return nil, err
	case !stands:
		return &badCredentials, nil
	case d.ClientIDs == tenants.ClientIDsExact && clientID != d.Name:
		return &clientIDRefused, nil
	}
	return nil, nil
}

// tenantQualifies is qualifies' rule for the tenant: it exists and is not
// suspended.
func tenantQualifies(t tenants.Tenant, found bool) *refusal {
	switch {
	case !found:
		return &badCredentials
	case t.Suspended:
		return &tenantSuspended
	}
	return nil
}

// credentialStands reports whether what a connection was admitted with
// still holds: its secret is still the device's, the key its token was
// signed with is still registered, or the certificate it presented is
// still pinned to it or its CA still the tenant's.
func (c *directoryCache) credentialStands(ctx context.Context, id identity, d tenants.Device) (bool, error) {
	switch {
	case id.ca != "":
		cas, err := c.authorities(ctx, id.tenant)
		return slices.ContainsFunc(cas, func(ca tenants.CA) bool { return ca.Fingerprint == id.ca }), err
	case id.leaf != "":
		pinned, err := c.certificates(ctx, id.tenant, id.device)
		return slices.ContainsFunc(pinned, func(dc tenants.DeviceCertificate) bool { return dc.Fingerprint == id.leaf }), err
	case id.key != "":
		keys, err := c.deviceKeys(ctx, id.tenant, id.device)
		return slices.ContainsFunc(keys, func(k tenants.DeviceKey) bool { return k.Fingerprint == id.key }), err
	}
	return d.SecretHash == id.secret, nil
}
