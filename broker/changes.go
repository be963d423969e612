package broker

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/tenants"
)

// changeApplier brings what runs here in line with the directory's
// committed changes: the cache forgets what changed at once, so the next
// connect reads it; live connections that no longer qualify (see
// qualifies) are ended by one worker, away from the control plane that
// committed the change. A change the directory cannot be asked about now
// waits in one retry queue, bounded, with a backoff per change.
type changeApplier struct {
	dir      *directoryCache
	reg      *registry
	sessions SessionStore
	timeout  time.Duration
	log      *slog.Logger
	now      func() time.Time

	queue chan tenants.Change
	wake  chan struct{}
	// exportChanged, if set, hears of each change of a tenant's rules
	// or destinations, beside its running broker's outboxes (the hub's
	// dormant outboxes, see outbox_suspended.go).
	exportChanged func(tenant string)

	mu      sync.Mutex
	retries map[changeKey]*retry
}

// changeKey names a change for the retry queue: a later failure of the
// same change replaces the earlier one.
type changeKey struct {
	kind           tenants.ChangeKind
	tenant, device string
}

type retry struct {
	change tenants.Change
	due    time.Time
	wait   time.Duration
}

// The retry queue: a change waits a second after its first failure, twice
// as long after each further one, up to a minute. Past maxRetries distinct
// changes the queue is replaced by one resync, which checks everything.
const (
	firstRetry = time.Second
	lastRetry  = time.Minute
	maxRetries = 10_000
)

func newChangeApplier(cfg Config, dir *directoryCache, reg *registry) *changeApplier {
	return &changeApplier{
		dir: dir, reg: reg, sessions: cfg.Sessions, timeout: cfg.ConnectTimeout, log: cfg.Log, now: cfg.Now,
		queue: make(chan tenants.Change, 1024), wake: make(chan struct{}, 1), retries: map[changeKey]*retry{},
	}
}

// onChange is called by the directory after each committed change. It
// must not wait: what takes time is queued for run.
func (a *changeApplier) onChange(c tenants.Change) {
	if c.Kind != tenants.ShadowChanged { // shadows are not cached: it only tells the delta (shadow.go)
		a.dir.invalidate(c)
	}
	switch c.Kind {
	case tenants.ACLChanged:
		if inst := a.reg.running(c.Tenant); inst != nil {
			inst.forgetRules()
		}
		return
	case tenants.ExportChanged:
		if inst := a.reg.running(c.Tenant); inst != nil {
			inst.exports.forget()
			inst.out.forget()
		}
		if a.exportChanged != nil {
			a.exportChanged(c.Tenant)
		}
		return
	}
	select {
	case a.queue <- c:
	default:
		a.later(c, 0) // the worker is behind: into the bounded queue
	}
}

// run applies queued changes and due retries until done is closed.
func (a *changeApplier) run(done <-chan struct{}) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		timer.Reset(a.nextDue())
		select {
		case <-done:
			return
		case c := <-a.queue:
			a.try(c)
		case <-a.wake:
		case <-timer.C:
			for _, c := range a.due() {
				a.try(c)
			}
		}
	}
}

// try applies a change, and retries it later if the directory did not
// answer.
func (a *changeApplier) try(c tenants.Change) {
	if err := a.apply(c); err != nil {
		w := a.later(c, firstRetry)
		a.log.Warn("apply change: will retry", "kind", c.Kind, "tenant", c.Tenant, "device", c.Device, "in", w, "err", err)
		return
	}
	a.mu.Lock()
	delete(a.retries, changeKey{c.Kind, c.Tenant, c.Device})
	a.mu.Unlock()
}

// later queues a change to be applied after wait, or after twice its last
// wait if it failed before; it returns the wait.
func (a *changeApplier) later(c tenants.Change, wait time.Duration) time.Duration {
	k := changeKey{c.Kind, c.Tenant, c.Device}
	a.mu.Lock()
	if r, ok := a.retries[k]; ok && wait > 0 {
		wait = min(max(2*r.wait, wait), lastRetry)
	}
	if _, ok := a.retries[k]; !ok && len(a.retries) >= maxRetries {
		a.log.Warn("apply change: too many changes waiting; checking everything instead", "waiting", len(a.retries))
		clear(a.retries)
		c, k, wait = tenants.Change{Kind: tenants.Resync}, changeKey{kind: tenants.Resync}, max(wait, firstRetry)
	}
	a.retries[k] = &retry{change: c, due: a.now().Add(wait), wait: wait}
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return wait
}

// nextDue is how long until the next retry is due.
func (a *changeApplier) nextDue() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	next := time.Hour
	now := a.now()
	for _, r := range a.retries {
		next = min(next, max(r.due.Sub(now), 0))
	}
	return next
}

// due returns the retries due now, oldest first. They stay queued until
// applied, so that a failure doubles their wait.
func (a *changeApplier) due() []tenants.Change {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	var rs []retry
	for _, r := range a.retries {
		if !r.due.After(now) {
			rs = append(rs, *r)
			r.due = now.Add(lastRetry) // not again while this one is tried
		}
	}
	slices.SortFunc(rs, func(x, y retry) int { return x.due.Compare(y.due) })
	out := make([]tenants.Change, len(rs))
	for i, r := range rs {
		out[i] = r.change
	}
	return out
}

// backlog is the number of changes waiting to be retried.
func (a *changeApplier) backlog() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.retries)
}

// apply brings live connections in line with a change: a deleted tenant's
// broker stops and its stored sessions go; a suspended tenant's devices
// are disconnected; a device's connections that no longer qualify end. It
// returns an error if the directory did not answer.
func (a *changeApplier) apply(c tenants.Change) error {
	if c.Kind == tenants.Resync {
		a.resync()
		return nil
	}
	inst := a.reg.running(c.Tenant)
	if c.Kind == tenants.TenantDeleted {
		if inst != nil {
			a.reg.stop(inst, "tenant deleted")
		}
		return a.purge(c.Tenant)
	}
	if inst == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	switch c.Kind {
	case tenants.TenantChanged:
		t, found, err := a.dir.tenant(ctx, c.Tenant)
		switch {
		case err != nil:
			return err
		case !found:
			a.reg.stop(inst, "tenant deleted")
			return nil
		}
		// Plan or quota changes: live connections follow at their next
		// packet.
		inst.setQuotas(t)
		if ref := tenantQualifies(t, found); ref != nil {
			for _, cl := range inst.live.conns(func(*deviceConn) bool { return true }) {
				inst.kick(cl, packets.ErrAdministrativeAction)
			}
			inst.log.Info("tenant suspended: devices disconnected")
		}
		return nil
	case tenants.CAChanged:
		// Connections admitted by a CA the tenant no longer trusts end.
		return a.recheck(ctx, inst, inst.live.conns(func(dc *deviceConn) bool { return dc.id.ca != "" }), "its CA was removed")
	case tenants.DeviceChanged:
		return a.recheck(ctx, inst, inst.live.conns(func(dc *deviceConn) bool { return dc.id.device == c.Device }), "after a change")
	case tenants.ShadowChanged:
		return inst.tellDelta(ctx, c.Device)
	}
	return nil
}

// recheck ends the connections that no longer qualify.
func (a *changeApplier) recheck(ctx context.Context, inst *instance, conns map[*deviceConn]*mqtt.Client, why string) error {
	for dc, cl := range conns {
		ref, err := a.dir.qualifies(ctx, dc.id, cl.ID)
		if err != nil {
			return err
		}
		if ref != nil {
			inst.kick(cl, packets.ErrAdministrativeAction)
			inst.log.Info("device disconnected: "+why, "device", dc.id.device, "client_id", cl.ID, "reason", ref.reason)
		}
	}
	return nil
}

// purge deletes what the session store keeps for a deleted tenant: its
// sessions, their queues and its retained messages.
func (a *changeApplier) purge(tenant string) error {
	if a.sessions == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sessions, retained, err := store.PurgeTenant(ctx, a.sessions, tenant)
	if err != nil {
		return err
	}
	a.log.Info("deleted tenant purged", "tenant", tenant, "sessions", sessions, "retained", retained)
	return nil
}

// resync checks everything live against the directory after changes may
// have been missed: each running tenant's rules, exports and quotas, its
// CAs, and each connected device. What fails is retried on its own.
func (a *changeApplier) resync() {
	for _, inst := range a.reg.all() {
		inst.forgetRules()
		inst.exports.forget()
		inst.out.forget()
		a.try(tenants.Change{Kind: tenants.TenantChanged, Tenant: inst.tenant})
		a.try(tenants.Change{Kind: tenants.CAChanged, Tenant: inst.tenant})
		for _, d := range inst.live.devices() {
			a.try(tenants.Change{Kind: tenants.DeviceChanged, Tenant: inst.tenant, Device: d})
		}
	}
}
