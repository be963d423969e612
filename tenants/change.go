package tenants

import "sync"

// ChangeKind says what part of the directory changed.
type ChangeKind string

// The kinds of change.
const (
	// TenantChanged: created, renamed, plan, suspension or quotas changed.
	TenantChanged ChangeKind = "tenant"
	// TenantDeleted: the tenant and everything in it is gone.
	TenantDeleted ChangeKind = "tenant_deleted"
	// DeviceChanged: a device was created, changed, rotated or deleted.
	DeviceChanged ChangeKind = "device"
	// DevicesImported: many of the tenant's devices were created at once
	// (a bulk import); whoever caches "no such device" for the tenant
	// drops it.
	DevicesImported ChangeKind = "devices_imported"
	// ACLChanged: the tenant's rule list changed.
	ACLChanged ChangeKind = "acl"
	// ExportChanged: the tenant's export rules changed, or one of its
	// destinations (its URL, headers or secret).
	ExportChanged ChangeKind = "export"
	// CAChanged: the tenant's certificate authorities changed.
	CAChanged ChangeKind = "ca"
	// Resync: changes may have been missed (the connection that carries
	// them from another process was lost); whoever caches the directory
	// drops all of it and checks what it holds again.
	Resync ChangeKind = "resync"
)

// Change tells that something in a tenant changed, after the change is
// committed. It carries no data: whoever caches the directory drops what it
// holds and reads it again.
type Change struct {
	Kind   ChangeKind `json:"kind"`
	Tenant string     `json:"tenant,omitempty"`
	Device string     `json:"device,omitempty"` // for DeviceChanged
}

// Bus delivers changes to subscribers in this process. Subscribers are called
// synchronously, in the order changes are committed by one goroutine, and
// must not block.
type Bus struct {
	mu   sync.RWMutex
	next int
	subs map[int]func(Change)
}

// Subscribe calls fn for every change from now on, until cancel is called.
func (b *Bus) Subscribe(fn func(Change)) (cancel func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs == nil {
		b.subs = map[int]func(Change){}
	}
	id := b.next
	b.next++
	b.subs[id] = fn
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.subs, id)
	}
}

// Publish delivers c to every subscriber.
func (b *Bus) Publish(c Change) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, fn := range b.subs {
		fn(c)
	}
}
