package broker

import (
	"context"
	"errors"
	"slices"
	"sync"
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
type directoryCache struct {
	dir Directory
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	gen     uint64 // bumped by every invalidation; a read that raced one is not cached
	tenants *lru.Cache[string, cached[tenants.Tenant]]
	devices *lru.Cache[deviceKey, cached[tenants.Device]]
	keys    *lru.Cache[deviceKey, cached[[]tenants.DeviceKey]]
	certs   *lru.Cache[deviceKey, cached[[]tenants.DeviceCertificate]]
	cas     *lru.Cache[string, cached[[]tenants.CA]]
}

func newDirectoryCache(dir Directory, size int, ttl time.Duration, now func() time.Time) *directoryCache {
	return &directoryCache{
		dir: dir, ttl: ttl, now: now,
		tenants: lru.New[string, cached[tenants.Tenant]](max(size/10, 100)),
		devices: lru.New[deviceKey, cached[tenants.Device]](size),
		keys:    lru.New[deviceKey, cached[[]tenants.DeviceKey]](max(size/10, 100)),
		certs:   lru.New[deviceKey, cached[[]tenants.DeviceCertificate]](max(size/10, 100)),
		cas:     lru.New[string, cached[[]tenants.CA]](max(size/10, 100)),
	}
}

// lookup returns a cached answer or fetches, caches and returns a fresh one.
// found is false when the directory has no such object; err is for failures.
func lookup[K comparable, T any](c *directoryCache, cache *lru.Cache[K, cached[T]], key K, fetch func() (T, error)) (T, bool, error) {
	c.mu.Lock()
	e, ok := cache.Get(key)
	gen := c.gen
	c.mu.Unlock()
	if ok && c.now().Sub(e.at) < c.ttl {
		return e.val, e.found, nil
	}
	v, err := fetch()
	found := err == nil
	if err != nil && !errors.Is(err, tenants.ErrNotFound) {
		if ok {
			// The directory is unreachable: an answer past its TTL beats
			// refusing a device that connected a minute ago. Changes
			// still drop entries, so nothing revoked is served.
			return e.val, e.found, nil
		}
		var zero T
		return zero, false, err
	}
	c.mu.Lock()
	if c.gen == gen {
		cache.Add(key, cached[T]{val: v, found: found, at: c.now()})
	}
	c.mu.Unlock()
	return v, found, nil
}

func (c *directoryCache) tenant(ctx context.Context, slug string) (tenants.Tenant, bool, error) {
	return lookup(c, c.tenants, slug, func() (tenants.Tenant, error) { return c.dir.Tenant(ctx, slug) })
}

func (c *directoryCache) device(ctx context.Context, tenant, name string) (tenants.Device, bool, error) {
	return lookup(c, c.devices, deviceKey{tenant, name}, func() (tenants.Device, error) { return c.dir.Device(ctx, tenant, name) })
}

// deviceKeys are the public keys a device signs its tokens with.
func (c *directoryCache) deviceKeys(ctx context.Context, tenant, name string) ([]tenants.DeviceKey, error) {
	keys, _, err := lookup(c, c.keys, deviceKey{tenant, name}, func() ([]tenants.DeviceKey, error) { return c.dir.DeviceKeys(ctx, tenant, name) })
	return keys, err
}

// certificates are the client certificates pinned to a device.
func (c *directoryCache) certificates(ctx context.Context, tenant, name string) ([]tenants.DeviceCertificate, error) {
	certs, _, err := lookup(c, c.certs, deviceKey{tenant, name}, func() ([]tenants.DeviceCertificate, error) { return c.dir.DeviceCertificates(ctx, tenant, name) })
	return certs, err
}

// authorities are the CAs a tenant trusts for its devices.
func (c *directoryCache) authorities(ctx context.Context, tenant string) ([]tenants.CA, error) {
	cas, _, err := lookup(c, c.cas, tenant, func() ([]tenants.CA, error) { return c.dir.CAs(ctx, tenant) })
	return cas, err
}

// invalidate drops what a change makes stale.
func (c *directoryCache) invalidate(ch tenants.Change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	switch ch.Kind {
	case tenants.TenantChanged:
		c.tenants.Remove(ch.Tenant)
	case tenants.TenantDeleted:
		c.tenants.Remove(ch.Tenant)
		c.devices.RemoveIf(func(k deviceKey) bool { return k.tenant == ch.Tenant })
		c.keys.RemoveIf(func(k deviceKey) bool { return k.tenant == ch.Tenant })
		c.certs.RemoveIf(func(k deviceKey) bool { return k.tenant == ch.Tenant })
		c.cas.Remove(ch.Tenant)
	case tenants.DeviceChanged:
		c.devices.Remove(deviceKey{ch.Tenant, ch.Device})
		c.keys.Remove(deviceKey{ch.Tenant, ch.Device})
		c.certs.Remove(deviceKey{ch.Tenant, ch.Device})
	case tenants.CAChanged:
		c.cas.Remove(ch.Tenant)
	case tenants.Resync:
		all := func(deviceKey) bool { return true }
		c.tenants.RemoveIf(func(string) bool { return true })
		c.devices.RemoveIf(all)
		c.keys.RemoveIf(all)
		c.certs.RemoveIf(all)
		c.cas.RemoveIf(func(string) bool { return true })
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
