package broker

import (
	"log/slog"
	"sync"
	"time"

	"github.com/roosthub/roost/tenants"
)

// registry keeps the tenants' brokers running here: it starts one when
// something needs it (acquire), keeps it while anything holds it, stops it
// once it has held nothing for the idle timeout or its tenant goes away,
// and looks them up. In a fleet a broker starts only for a tenant this node
// holds, and the tenant is given up once its broker stopped.
type registry struct {
	start func(tenants.Tenant) (*instance, error)
	// fleet is nil outside a fleet.
	fleet interface {
		Holds(tenant string) bool
		Release(tenant string)
	}
	// wide reports whether a tenant runs on several nodes, its home among
	// them (see wide.go): nil, none does.
	wide func(tenant string) bool
	// connected, if set, is told of each connection counted (see
	// Hub.maybeWiden).
	connected                  func(inst *instance, conns int)
	idleTimeout                time.Duration
	maxWatches, maxWatchesEach int
	now                        func() time.Time
	log                        *slog.Logger

	mu        sync.Mutex
	instances map[string]*instance
	closed    bool
	// releasing are the tenants whose claim is being given up; no broker
	// of theirs starts meanwhile.
	releasing map[string]bool
}

func newRegistry(cfg Config, start func(tenants.Tenant) (*instance, error)) *registry {
	r := &registry{
		start: start, idleTimeout: cfg.IdleTimeout, maxWatches: cfg.MaxWatches, maxWatchesEach: cfg.MaxWatchesEach,
		now: cfg.Now, log: cfg.Log, instances: map[string]*instance{}, releasing: map[string]bool{},
	}
	if cfg.Cluster != nil {
		r.fleet = cfg.Cluster
	}
	return r
}

// acquire returns the tenant's running instance, starting it if needed, and
// holds it (the reaper leaves it running) until release. A hold is not a
// device connection: API publishes and live views hold an instance without
// taking from max_connections.
func (r *registry) acquire(t tenants.Tenant) (*instance, error) {
	r.promote(t.Slug)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.acquireLocked(t)
}

func (r *registry) acquireLocked(t tenants.Tenant) (*instance, error) {
	if r.closed {
		return nil, serverUnavailable
	}
	inst := r.instances[t.Slug]
	if inst == nil {
		if r.fleet != nil && (!r.fleet.Holds(t.Slug) && (r.wide == nil || !r.wide(t.Slug)) || r.releasing[t.Slug]) {
			return nil, serverUnavailable
		}
		var err error
		if inst, err = r.start(t); err != nil {
			return nil, err
		}
		r.instances[t.Slug] = inst
		r.log.Info("tenant broker started", "tenant", t.Slug, "wide", inst.spread)
	}
	inst.holds++
	return inst, nil
}

func (r *registry) release(inst *instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	inst.holds--
	inst.lastActive = r.now()
}

// acquireConn is acquire for a device connection, counted until
// releaseConn: the tenant's max_connections and connect_rate, as they are
// now, apply.
func (r *registry) acquireConn(t tenants.Tenant) (*instance, error) {
	r.promote(t.Slug)
	r.mu.Lock()
	inst, err := r.acquireLocked(t)
	if err != nil {
		r.mu.Unlock()
		return nil, err
	}
	inst.conns++
	conns := inst.conns
	over := int64(conns) > inst.quotas().MaxConnections
	r.mu.Unlock()
	switch {
	case over:
		r.releaseConn(inst)
		return nil, quotaConnections
	case !inst.connectAllowed(r.now()):
		r.releaseConn(inst)
		return nil, connectRateExceeded
	}
	if r.connected != nil {
		r.connected(inst, conns)
	}
	return inst, nil
}

func (r *registry) releaseConn(inst *instance) {
	r.mu.Lock()
	inst.conns--
	r.mu.Unlock()
	r.release(inst)
}

// acquireWatch is acquire for a live view: a tenant has at most
// maxWatches open, and one watcher (a person) at most maxWatchesEach of
// them, so that watching can take neither the devices' connections nor
// every other member's views.
func (r *registry) acquireWatch(t tenants.Tenant, watcher string) (*instance, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if inst := r.instances[t.Slug]; inst != nil {
		switch {
		case inst.watches >= r.maxWatches:
			return nil, &tenants.QuotaError{Quota: "live_views", Limit: int64(r.maxWatches)}
		case inst.watchers[watcher] >= r.maxWatchesEach:
			return nil, &tenants.QuotaError{Quota: "live_views_each", Limit: int64(r.maxWatchesEach)}
		}
	}
	inst, err := r.acquireLocked(t)
	if err != nil {
		return nil, err
	}
	inst.watches++
	inst.watchers[watcher]++
	return inst, nil
}

func (r *registry) releaseWatch(inst *instance, watcher string) {
	r.mu.Lock()
	inst.watches--
	if inst.watchers[watcher]--; inst.watchers[watcher] <= 0 {
		delete(inst.watchers, watcher)
	}
	r.mu.Unlock()
	r.release(inst)
}

// running returns the tenant's instance if one is running.
func (r *registry) running(tenant string) *instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.instances[tenant]
}

// all returns the running instances as they are now.
func (r *registry) all() []*instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*instance, 0, len(r.instances))
	for _, inst := range r.instances {
		out = append(out, inst)
	}
	return out
}

// count is the number of running instances.
func (r *registry) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.instances)
}

// reapIdle stops the instances that have held nothing for the idle timeout.
func (r *registry) reapIdle() {
	var idle []*instance
	r.mu.Lock()
	now := r.now()
	for slug, inst := range r.instances {
		if inst.idle() && now.Sub(inst.lastActive) >= r.idleTimeout {
			delete(r.instances, slug)
			idle = append(idle, inst)
		}
	}
	r.mu.Unlock()
	for _, inst := range idle {
		r.closeAndGiveUp(inst, "idle")
	}
}

// promote stops a spread tenant's broker that runs here as one of its
// nodes once this node became its home (it placed a persistent session
// here while no other home lived): the next to start is the home, with the
// tenant's sessions. Its clean sessions are disconnected, and reconnect.
func (r *registry) promote(tenant string) {
	if r.fleet == nil {
		return
	}
	r.mu.Lock()
	inst := r.instances[tenant]
	// Where sessions live anywhere the home holds none: nothing to restart.
	stale := inst != nil && inst.spread && !inst.home && !inst.anywhere && r.fleet.Holds(tenant)
	if stale {
		delete(r.instances, tenant)
	}
	r.mu.Unlock()
	if stale {
		inst.close()
		inst.log.Info("tenant broker stopped: this node became the tenant's home, and starts it as such")
	}
}

// suspend closes an instance without giving its tenant up, and starts
// no broker of the tenant until resume (once; later calls do nothing): what is done meanwhile (Hub.widen)
// sees the sessions the instance stored as it closed, and no broker
// changing them. It reports false if the instance was no longer running.
func (r *registry) suspend(inst *instance, why string) (resume func(), ok bool) {
	r.mu.Lock()
	if r.instances[inst.tenant] != inst || r.releasing[inst.tenant] || r.closed {
		r.mu.Unlock()
		return nil, false
	}
	delete(r.instances, inst.tenant)
	r.releasing[inst.tenant] = true
	r.mu.Unlock()
	inst.close()
	inst.log.Info("tenant broker stopped: " + why)
	return sync.OnceFunc(func() {
		r.mu.Lock()
		delete(r.releasing, inst.tenant)
		r.mu.Unlock()
	}), true
}

// stop takes an instance out of service and closes it.
func (r *registry) stop(inst *instance, why string) {
	r.mu.Lock()
	if r.instances[inst.tenant] == inst {
		delete(r.instances, inst.tenant)
	}
	r.mu.Unlock()
	r.closeAndGiveUp(inst, why)
}

func (r *registry) closeAndGiveUp(inst *instance, why string) {
	inst.close()
	inst.log.Info("tenant broker stopped: " + why)
	r.giveUp(inst.tenant)
}

// giveUp releases a tenant whose broker stopped here, unless it started
// again meanwhile. Until the release is done no broker of the tenant
// starts here (acquire refuses), so that the claim and the broker agree.
func (r *registry) giveUp(tenant string) {
	if r.fleet == nil || !r.fleet.Holds(tenant) {
		return // a spread tenant's node that was not its home holds nothing
	}
	r.mu.Lock()
	if r.instances[tenant] != nil || r.releasing[tenant] || r.closed {
		r.mu.Unlock()
		return
	}
	r.releasing[tenant] = true
	r.mu.Unlock()
	r.fleet.Release(tenant)
	r.mu.Lock()
	delete(r.releasing, tenant)
	r.mu.Unlock()
}

// refuse makes the registry start nothing and give up no tenant from
// now on: the hub is closing.
func (r *registry) refuse() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
}

// close stops every instance; nothing starts afterwards.
func (r *registry) close() {
	r.mu.Lock()
	r.closed = true
	insts := make([]*instance, 0, len(r.instances))
	for _, inst := range r.instances {
		insts = append(insts, inst)
	}
	r.instances = map[string]*instance{}
	r.mu.Unlock()
	for _, inst := range insts {
		inst.close()
	}
}
