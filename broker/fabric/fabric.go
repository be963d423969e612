// Package fabric joins the brokers that serve one tenant on several nodes
// of a fleet, through Redis: the tenant's routes (which owner holds
// subscribers for which filters) and the inboxes messages cross into.
//
// An owner is a node's broker for the tenant, named by the node's id, or
// the tenant's home, named "home" whichever node it is on (the home holds
// the tenant's persistent sessions). Each owner reads its own inbox: a
// node's is a stream read from its tail (its subscribers are clean
// sessions, which start afresh on any node), the home's is a stream read
// through a consumer group, so that a message is acknowledged in it only
// once the home has queued it, and a new home takes over whatever the old
// one left (XAUTOCLAIM). A publish is added to the inbox of every other
// owner whose routes match its topic, in one script that first checks that
// the publisher's copy of the routes is current: a route is written before
// the SUBACK, and bumps the routes' version, so a message acknowledged after
// a SUBACK anywhere reaches that subscriber.
//
// Owners renew their membership every second; an owner whose membership
// lapsed (its node died or was cut off) loses its routes and its inbox at
// the next node's sweep. The home's routes stay until a new home replaces
// them: its persistent sessions outlive it, and so must what is queued
// for them.
//
//	<prefix>:{<tenant>}:routes      hash: "<owner>\x00<filter>" → "1"
//	<prefix>:{<tenant>}:rv          the routes' version, raised by every change
//	<prefix>:{<tenant>}:members     hash: owner → lease deadline (Redis clock, ms)
//	<prefix>:{<tenant>}:in:<owner>  stream: the owner's inbox, field "m"
//	<prefix>:rv                     channel: "<tenant>" when its routes change
package fabric

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	goredis "github.com/redis/go-redis/v9"

	"github.com/roosthub/roost/internal/redisretry"
)

// Home names the tenant's home among the owners.
const Home = "home"

// Message is a publish crossing from one node to another.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	// Props are the publish's properties as the broker encodes them.
	Props []byte
	// Groups are the shared subscription groups ($share/<group>/<filter>)
	// the receiving owner serves for this message: each group gets it
	// once, on one node.
	Groups []string
	// Passed says the message is a shared group's turn another node
	// passed on, having no member that could take it (see Local.Turn):
	// the receiving owner serves it however it can, and passes it on no
	// further.
	Passed bool
	// Seqs are, for each persistent session connected to the receiving
	// node that the message is for, the number of its copy in the
	// session's queue: the sender queued it before it was acknowledged.
	Seqs map[string]uint64
	// Kick names a session claimed on another node (Epoch is the claim):
	// the receiving node ends its connection if its own claim is older.
	// An entry with Kick carries no message.
	Kick  string
	Epoch uint64
}

// Config is what a node's fabric needs.
type Config struct {
	// URL is redis://[user:password@]host:port[/db].
	URL string
	// Prefix starts every key; "roost" if empty.
	Prefix string
	// Node is this node's id.
	Node string
	Log  *slog.Logger
	// Lease is how long an owner counts as present after it last renewed
	// (every Lease/5): 5s if zero.
	Lease time.Duration
	// InboxLength caps a node's inbox (approximately): 100,000 if zero.
	// The home's is not capped: what it holds is owed to persistent
	// sessions.
	InboxLength int64
}

// Node is a node's part in its spread tenants, whatever carries them;
// Redis is the one on Redis.
type Node interface {
	// Join makes this node an owner of the tenant: as its home, or as
	// one of its nodes. deliver receives, in order, the messages other
	// owners send; an error leaves the message to be delivered again
	// (a home's), or drops it (a node's, whose clean subscribers miss it).
	Join(ctx context.Context, tenant string, home bool, deliver func(Message) error) (Owner, error)
	// Stats are the counters since the node started.
	Stats() Stats
}

// Owner is one tenant's broker on this node, as one of its owners.
type Owner interface {
	// Add writes this owner's route for a filter, before the SUBACK of
	// its first subscriber here; Remove takes it away with the last.
	Add(ctx context.Context, filter string) error
	Remove(ctx context.Context, filter string) error
	// Replace sets this owner's routes to exactly the filters given.
	Replace(ctx context.Context, filters []string) error
	// Send hands a message to the other owners it is for before the
	// publisher is acknowledged, and returns how many. A shared group is
	// served once: not at all elsewhere if servedHere says this node has
	// a member of it.
	Send(ctx context.Context, m Message, servedHere func(group string) bool) (int, error)
	// Leave stops this owner's part.
	Leave()
}

var (
	_ Node  = (*Redis)(nil)
	_ Owner = (*Tenant)(nil)
)

// Redis is a node's part in its spread tenants, on Redis.
type Redis struct {
	cfg Config
	rdb *goredis.Client
	// once sends the sends, and reads a home's reads, which must never
	// run twice (see open).
	once, reads *goredis.Client

	mu      sync.Mutex
	tenants map[string]*Tenant
	ps      *goredis.PubSub

	stop    context.CancelFunc
	stopped chan struct{}

	// Counters for the node's metrics.
	sent, received, stale, failed, lapses atomic.Int64
	// renewedSince is when the memberships were last renewed after a
	// failure (unix ns; 0 while failing).
	renewedSince atomic.Int64
}

// Stats are a fabric's counters since it started.
type Stats struct {
	// Sent and Received count inbox entries added and delivered.
	Sent, Received int64
	// Stale counts sends refused because the sender's routes were out of
	// date (it read them again and sent again).
	Stale int64
	// Failed counts sends Redis did not take.
	Failed int64
	// Lapses counts memberships found lapsed.
	Lapses int64
	// Tenants is how many tenants this node serves through the fabric,
	// Routes how many routes they have in all, Lag how many entries wait
	// in this node's inboxes.
	Tenants, Routes, Lag int64
}

// New connects to Redis and starts renewing the node's memberships.
func New(ctx context.Context, cfg Config) (*Redis, error) {
	return open(ctx, cfg, nil)
}

// open is New, with dial (if not nil) making the client's connections.
func open(ctx context.Context, cfg Config, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (*Redis, error) {
	if cfg.Node == "" {
		return nil, errors.New("fabric: no node id")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "roost"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 5 * time.Second
	}
	if cfg.InboxLength <= 0 {
		cfg.InboxLength = 100_000
	}
	opts, err := goredis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("fabric: redis URL: %w", err)
	}
	if dial != nil {
		opts.Dialer = dial
	}
	redisretry.CheckClosedTLS(opts)
	rdb := goredis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("fabric: redis: %w", err)
	}
	// Two commands go on clients that never send one again: go-redis
	// retries a command whose connection failed by default, even after
	// Redis ran it. A send run twice would put a message in an inbox
	// twice, delivered twice; its caller is told the send failed instead.
	// A home's read run twice would leave what the first read took
	// pending, never delivered; the reader is told, and reads its pending
	// entries again. The reads, which block up to 2 s each, have a client
	// (a pool) of their own, so that a node home to many tenants does not
	// hold the sends up. Every other command is safe to send again and
	// keeps the retries.
	onceOpts := *opts
	onceOpts.MaxRetries = -1
	f := &Redis{cfg: cfg, rdb: rdb, once: goredis.NewClient(&onceOpts), reads: goredis.NewClient(&onceOpts), tenants: map[string]*Tenant{}}
	f.ps = rdb.Subscribe(context.Background(), f.channel())
	runCtx, stop := context.WithCancel(context.Background())
	f.stop, f.stopped = stop, make(chan struct{})
	go f.run(runCtx)
	return f, nil
}

// Node is this node's id.
func (f *Redis) Node() string { return f.cfg.Node }

// Close leaves every tenant and closes the connection.
func (f *Redis) Close() error {
	f.mu.Lock()
	ts := make([]*Tenant, 0, len(f.tenants))
	for _, t := range f.tenants {
		ts = append(ts, t)
	}
	f.mu.Unlock()
	for _, t := range ts {
		t.Leave()
	}
	f.stop()
	<-f.stopped
	f.ps.Close()
	f.once.Close()
	f.reads.Close()
	return f.rdb.Close()
}

// Stats are the fabric's counters now.
func (f *Redis) Stats() Stats {
	s := Stats{Sent: f.sent.Load(), Received: f.received.Load(), Stale: f.stale.Load(), Failed: f.failed.Load(), Lapses: f.lapses.Load()}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range f.tenants {
		s.Tenants++
		t.mu.RLock()
		s.Routes += int64(t.count)
		t.mu.RUnlock()
		s.Lag += t.lag.Load()
	}
	return s
}

func (f *Redis) key(tenant, what string) string {
	return f.cfg.Prefix + ":{" + tenant + "}:" + what
}

func (f *Redis) channel() string { return f.cfg.Prefix + ":rv" }

// run renews the memberships, sweeps lapsed owners, and reads the routes
// of a tenant again when another node changed them.
func (f *Redis) run(ctx context.Context) {
	defer close(f.stopped)
	renew := time.NewTicker(f.cfg.Lease / 5)
	defer renew.Stop()
	changes := f.ps.Channel(goredis.WithChannelSize(1024))
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-changes:
			if !ok {
				return
			}
			if t := f.tenant(m.Payload); t != nil {
				t.invalidate()
			}
		case <-renew.C:
			f.mu.Lock()
			ts := make([]*Tenant, 0, len(f.tenants))
			for _, t := range f.tenants {
				ts = append(ts, t)
			}
			f.mu.Unlock()
			// A node cut off past a lease is not told until it is back:
			// when every node was cut off (Redis away) nobody swept it,
			// and its clean sessions lose nothing by waiting.
			err := f.renew(ctx, ts)
			switch {
			case err != nil && ctx.Err() == nil && !failing:
				f.cfg.Log.Warn("fabric: cannot renew this node's memberships", "err", err)
				failing = true
			case err == nil && failing:
				f.cfg.Log.Info("fabric: memberships renewed again")
				failing = false
			}
			for _, t := range ts {
				// The routes are read again now and then, whatever the
				// channel said: a message on it can be lost.
				if t.sinceRead() > 5*time.Second {
					t.invalidate()
				}
			}
		}
	}
}

func (f *Redis) tenant(name string) *Tenant {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tenants[name]
}

// renewScript renews an owner's membership and, if ARGV[6] is "1", sweeps
// the owners whose membership lapsed: their routes and inbox go (a home's
// routes and inbox stay, see the package comment), and the routes' version
// rises. It returns whether the owner's membership was new (it had been
// swept, or it is joining) and how many routes it swept.
//
// KEYS: members, routes, version. ARGV: owner, lease ms, key prefix of the
// inboxes, channel, tenant, sweep.
var renewScript = goredis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fresh = redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
if ARGV[6] ~= '1' then return {fresh, 0} end
local m = redis.call('HGETALL', KEYS[1])
local gone = {}
for i = 1, #m, 2 do
  if tonumber(m[i+1]) < now and m[i] ~= 'home' then gone[m[i]] = true; redis.call('HDEL', KEYS[1], m[i]); redis.call('DEL', ARGV[3] .. m[i]) end
end
if next(gone) == nil then return {fresh, 0} end
local fields = redis.call('HKEYS', KEYS[2])
local n = 0
for _, f in ipairs(fields) do
  local owner = string.match(f, '^([^%z]*)%z')
  if owner and gone[owner] then redis.call('HDEL', KEYS[2], f); n = n + 1 end
end
if n > 0 then redis.call('INCR', KEYS[3]); redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return {fresh, n}
`)

// renew renews the memberships of the tenants joined. A node sweeps the
// others' lapsed memberships only once it has itself renewed without a
// break for a lease: after Redis was away for everyone, every membership
// lapsed, and the first node back must not take the others for dead. A
// joined tenant whose membership was gone (swept: this node was cut off or
// paused past its lease) has lost its routes: its owner is told (OnLapse).
func (f *Redis) renew(ctx context.Context, ts []*Tenant) error {
	if len(ts) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, f.cfg.Lease/2)
	defer cancel()
	sweep := "0"
	if since := f.renewedSince.Load(); since != 0 && time.Since(time.Unix(0, since)) >= f.cfg.Lease {
		sweep = "1"
	}
	pipe := f.rdb.Pipeline()
	cmds := make([]*goredis.Cmd, len(ts))
	for i, t := range ts {
		cmds[i] = renewScript.Eval(ctx, pipe, []string{t.members, t.routes, t.version},
			t.owner, f.cfg.Lease.Milliseconds(), f.key(t.name, "in:"), f.channel(), t.name, sweep)
	}
	_, err := pipe.Exec(ctx)
	if errors.Is(err, goredis.Nil) {
		err = nil
	}
	if err != nil {
		f.renewedSince.Store(0)
		return err
	}
	f.renewedSince.CompareAndSwap(0, time.Now().UnixNano())
	for i, t := range ts {
		res, _ := cmds[i].Slice()
		if len(res) > 0 && res[0] == int64(1) && t.joined.Load() {
			t.lapse()
		}
	}
	return nil
}

// Tenant is one tenant's broker on this node, as an owner in the fabric.
type Tenant struct {
	f       *Redis
	name    string
	owner   string
	deliver func(Message) error

	routes, version, members, inbox string

	mu sync.RWMutex
	// ver is the version of the routes held; owners maps each owner to
	// its filters; index matches topics to owners (an owner is a
	// "client" of it); count is how many routes there are.
	ver    string
	owners map[string]map[string]bool
	index  *mqtt.TopicsIndex
	count  int
	// present are the owners with a membership, as last read; holders
	// maps a persistent session to the owner its client is connected to.
	present []string
	holders map[string]string
	readAt  time.Time
	stale   bool
	lag     atomic.Int64

	stop    context.CancelFunc
	stopped chan struct{}
	once    sync.Once

	// joined is set once Join returned; onLapse is what to do when the
	// membership is found lapsed (see OnLapse).
	joined  atomic.Bool
	lapseMu sync.Mutex
	onLapse func()
}

// OnLapse sets what to do when this owner's membership lapsed (its node
// was cut off from Redis, or paused, past a lease): other nodes may have
// swept its routes meanwhile, and sent nothing here for its subscribers.
// It may run more than once.
func (t *Tenant) OnLapse(fn func()) {
	t.lapseMu.Lock()
	defer t.lapseMu.Unlock()
	t.onLapse = fn
}

func (t *Tenant) lapse() {
	t.lapseMu.Lock()
	fn := t.onLapse
	t.lapseMu.Unlock()
	t.f.lapses.Add(1)
	t.f.cfg.Log.Warn("fabric: this node's membership of a tenant lapsed; its routes may be gone", "tenant", t.name, "owner", t.owner)
	t.invalidate()
	if fn != nil {
		fn()
	}
}

// Join makes this node an owner of the tenant: as its home, or as one of
// its nodes. deliver receives, in order, the messages other owners send;
// an error leaves the message in the inbox, to be delivered again. A home
// takes over the messages its predecessor left undelivered.
func (f *Redis) Join(ctx context.Context, tenant string, home bool, deliver func(Message) error) (Owner, error) {
	owner := f.cfg.Node
	if home {
		owner = Home
	}
	t := &Tenant{
		f: f, name: tenant, owner: owner, deliver: deliver,
		routes: f.key(tenant, "routes"), version: f.key(tenant, "rv"), members: f.key(tenant, "members"),
		inbox: f.key(tenant, "in:"+owner), stale: true,
	}
	f.mu.Lock()
	if _, taken := f.tenants[tenant]; taken {
		f.mu.Unlock()
		return nil, fmt.Errorf("fabric: tenant %s joined twice on this node", tenant)
	}
	f.tenants[tenant] = t
	f.mu.Unlock()
	err := f.renew(ctx, []*Tenant{t})
	if err == nil {
		if home {
			err = f.rdb.XGroupCreateMkStream(ctx, t.inbox, Home, "0").Err()
			if err != nil && strings.HasPrefix(err.Error(), "BUSYGROUP") {
				err = nil
			}
		} else {
			// What a node's inbox held was for the clean sessions of an
			// earlier run, gone with it; the others read the members again.
			if err = f.rdb.Del(ctx, t.inbox).Err(); err == nil {
				err = t.Replace(ctx, nil)
			}
		}
	}
	if err == nil {
		err = t.load(ctx)
	}
	if err != nil {
		f.mu.Lock()
		delete(f.tenants, tenant)
		f.mu.Unlock()
		return nil, fmt.Errorf("fabric: join tenant %s: %w", tenant, err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	t.stop, t.stopped = stop, make(chan struct{})
	go t.read(runCtx)
	t.joined.Store(true)
	return t, nil
}

// Lag is how many entries waited in the owner's inbox when it last read it.
func (t *Tenant) Lag() int64 { return t.lag.Load() }

// Owner is the name this broker has among the tenant's owners.
func (t *Tenant) Owner() string { return t.owner }

// Leave stops reading the inbox. A node's routes and membership go with
// it; a home's stay (see the package comment).
func (t *Tenant) Leave() {
	t.once.Do(func() {
		t.stop()
		<-t.stopped
		t.f.mu.Lock()
		if t.f.tenants[t.name] == t {
			delete(t.f.tenants, t.name)
		}
		t.f.mu.Unlock()
		if t.owner == Home {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := replaceScript.Run(ctx, t.f.rdb, []string{t.routes, t.version, t.members, t.inbox}, t.owner, t.f.channel(), t.name, "1").Err(); err != nil {
			t.f.cfg.Log.Warn("fabric: leave a tenant (its routes lapse with the membership)", "tenant", t.name, "err", err)
		}
	})
}

// routeScript adds (ARGV[2] = "1") or removes a route and, if that changed
// anything, raises the version and says so on the channel.
//
// KEYS: routes, version. ARGV: field, add, channel, tenant.
var routeScript = goredis.NewScript(`
local changed
if ARGV[2] == '1' then changed = redis.call('HSETNX', KEYS[1], ARGV[1], '1') else changed = redis.call('HDEL', KEYS[1], ARGV[1]) end
if changed == 0 then return 0 end
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
`)

// replaceScript sets an owner's routes to the filters given (ARGV[5...]);
// with ARGV[4] = "1" it also ends the owner's membership and inbox.
//
// KEYS: routes, version, members, inbox. ARGV: owner, channel, tenant, leave, filters...
var replaceScript = goredis.NewScript(`
local prefix = ARGV[1] .. '\0'
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], f) end
end
for i = 5, #ARGV do redis.call('HSET', KEYS[1], prefix .. ARGV[i], '1') end
if ARGV[4] == '1' then redis.call('HDEL', KEYS[3], ARGV[1]); redis.call('DEL', KEYS[4]) end
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
`)

// Add writes the route of this owner for a filter, before the SUBACK of
// its first subscriber here.
func (t *Tenant) Add(ctx context.Context, filter string) error {
	return t.route(ctx, filter, true)
}

// Remove takes the route away once the filter's last subscriber here is gone.
func (t *Tenant) Remove(ctx context.Context, filter string) error {
	return t.route(ctx, filter, false)
}

func (t *Tenant) route(ctx context.Context, filter string, add bool) error {
	a := "0"
	if add {
		a = "1"
	}
	err := routeScript.Run(ctx, t.f.rdb, []string{t.routes, t.version}, t.owner+"\x00"+filter, a, t.f.channel(), t.name).Err()
	if err != nil {
		return fmt.Errorf("fabric: route %q: %w", filter, err)
	}
	t.invalidate()
	return nil
}

// Replace sets this owner's routes to exactly the filters given: a home
// taking over writes those of the sessions it restored.
func (t *Tenant) Replace(ctx context.Context, filters []string) error {
	args := []any{t.owner, t.f.channel(), t.name, "0"}
	for _, f := range filters {
		args = append(args, f)
	}
	if err := replaceScript.Run(ctx, t.f.rdb, []string{t.routes, t.version, t.members, t.inbox}, args...).Err(); err != nil {
		return fmt.Errorf("fabric: replace routes: %w", err)
	}
	t.invalidate()
	return nil
}

func (t *Tenant) invalidate() {
	t.mu.Lock()
	t.stale = true
	t.mu.Unlock()
}

func (t *Tenant) sinceRead() time.Duration {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return time.Since(t.readAt)
}

// load reads the tenant's routes.
func (t *Tenant) load(ctx context.Context) error {
	pipe := t.f.rdb.TxPipeline()
	all := pipe.HGetAll(ctx, t.routes)
	ver := pipe.Get(ctx, t.version)
	members := pipe.HKeys(ctx, t.members)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return err
	}
	v := ver.Val()
	if v == "" {
		v = "0"
	}
	owners := map[string]map[string]bool{}
	holders := map[string]string{}
	index := mqtt.NewTopicsIndex()
	count := 0
	for field := range all.Val() {
		owner, filter, ok := strings.Cut(field, "\x00")
		if !ok {
			continue
		}
		if owners[owner] == nil {
			owners[owner] = map[string]bool{}
		}
		owners[owner][filter] = true
		sub := packets.Subscription{Filter: filter}
		if cid, ok := strings.CutPrefix(owner, sessionMark); ok {
			var holder string
			sub.Qos, sub.NoLocal, holder = parseSessionRoute(all.Val()[field])
			if holder != "" {
				holders[cid] = holder
			}
		}
		index.Subscribe(owner, sub)
		count++
	}
	t.mu.Lock()
	t.ver, t.owners, t.index, t.count, t.readAt, t.stale = v, owners, index, count, time.Now(), false
	t.present = members.Val()
	t.holders = holders
	t.mu.Unlock()
	return nil
}

// current is the routes as held, read again first if they are stale.
func (t *Tenant) current(ctx context.Context) (string, *mqtt.TopicsIndex, error) {
	t.mu.RLock()
	ver, index, stale := t.ver, t.index, t.stale
	t.mu.RUnlock()
	if !stale {
		return ver, index, nil
	}
	if err := t.load(ctx); err != nil {
		return "", nil, err
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.ver, t.index, nil
}

// sendScript adds a message to inboxes if the routes are still at the
// version the sender matched against.
//
// KEYS: version, inboxes... ARGV: version, then per inbox its cap ("0": none)
// and its entry.
var sendScript = goredis.NewScript(`
local v = redis.call('GET', KEYS[1]) or '0'
if v ~= ARGV[1] then return redis.error_reply('ROOST_STALE_ROUTES') end
for i = 2, #KEYS do
  local cap = ARGV[2 * i - 2]
  if cap == '0' then redis.call('XADD', KEYS[i], '*', 'm', ARGV[2 * i - 1])
  else redis.call('XADD', KEYS[i], 'MAXLEN', '~', cap, '*', 'm', ARGV[2 * i - 1]) end
end
return #KEYS - 1
`)

// Send adds a message to the inbox of every other owner with a route
// matching its topic (every other present owner for a retained message),
// and returns how many. A shared group is sent to one of its owners, and
// not at all if servedHere says this node has a member of it. A QoS 0
// message with no owner to go to costs no round trip; any other is sent
// against the routes' current version, so that once Send returns the
// message is in the inbox of every owner whose route was written before.
func (t *Tenant) Send(ctx context.Context, m Message, servedHere func(group string) bool) (int, error) {
	return t.SendQueued(ctx, m, Local{Group: servedHere})
}

// Local is what a sender tells SendQueued about its own node.
type Local struct {
	// Group reports whether a member of a shared group here takes the
	// message (the group is then sent to no other owner). Without it, a
	// group is served here if this node has a route for it.
	Group func(group string) bool
	// Connected reports whether this node's broker queued the message
	// for a persistent session itself (its client is connected here).
	Connected func(clientID string) bool
	// Publisher is the publishing client's id (for No Local).
	Publisher string
	// Turn, if set, names the one shared group whose turn is sent,
	// passed on by this node, which received the message for the group
	// and has no member that could take it: it goes to another owner of
	// the group, marked Passed, and nothing else of the message is sent.
	Turn string
	// Queue appends copies of the message to persistent sessions' queues
	// and returns their numbers in order (0: not queued, the queue full).
	Queue func(ctx context.Context, copies []Copy) ([]uint64, error)
}

// Copy is a message's copy for a persistent session, at the QoS it gets.
type Copy struct {
	ClientID string
	QoS      byte
}

// SendQueued is Send for a fabric where persistent sessions live on any
// node (see Sessions): the message is also queued, through local.Queue,
// for every persistent session with a matching route that is not connected
// here, and sent to the node its client is connected to, with the copy's
// number. Copies queued before a stale version was refused are not queued
// again.
func (t *Tenant) SendQueued(ctx context.Context, m Message, local Local) (int, error) {
	queued := map[string]uint64{}
	nonce := rand.Uint64()
	unrun := 0 // sends Redis refused without running
	for attempt := 0; ; attempt++ {
		ver, index, err := t.current(ctx)
		if err != nil {
			t.f.failed.Add(1)
			return 0, fmt.Errorf("fabric: read routes: %w", err)
		}
		targets, copies := t.targets(ctx, index, m, local, nonce)
		var fresh []Copy
		for _, c := range copies {
			if _, done := queued[c.ClientID]; !done && local.Queue != nil {
				fresh = append(fresh, c)
			}
		}
		if len(fresh) > 0 {
			// Queue only against routes still current: a copy queued for
			// a session whose route just went would stay in its queue.
			if cur, err := t.f.rdb.Get(ctx, t.version).Result(); err == nil && cur != ver && ctx.Err() == nil {
				t.f.stale.Add(1)
				t.invalidate()
				continue
			}
			seqs, err := local.Queue(ctx, fresh)
			if err != nil {
				return 0, fmt.Errorf("fabric: queue for persistent sessions: %w", err)
			}
			for i, c := range fresh {
				queued[c.ClientID] = seqs[i]
			}
		}
		if len(targets) == 0 && m.QoS == 0 {
			return 0, nil
		}
		keys := make([]string, 0, len(targets)+1)
		args := make([]any, 0, 2*len(targets)+1)
		keys = append(keys, t.version)
		args = append(args, ver)
		for _, tg := range targets {
			keys = append(keys, t.f.key(t.name, "in:"+tg.owner))
			limit := strconv.FormatInt(t.f.cfg.InboxLength, 10)
			if tg.owner == Home {
				limit = "0"
			}
			mm := m
			mm.Groups, mm.Passed = tg.groups, local.Turn != ""
			for _, cid := range tg.sessions {
				if seq, ok := queued[cid]; ok && seq != 0 {
					if mm.Seqs == nil {
						mm.Seqs = map[string]uint64{}
					}
					mm.Seqs[cid] = seq
				}
			}
			args = append(args, limit, encode(mm))
		}
		err = sendScript.Run(ctx, t.f.once, keys, args...).Err()
		switch {
		case err == nil:
			t.f.sent.Add(int64(len(targets)))
			return len(targets), nil
		case redisretry.Unrun(err) && unrun < redisretry.Attempts-1:
			// Redis did not run it: sent again, as go-redis would have.
			unrun++
			if werr := redisretry.Wait(ctx, unrun); werr == nil {
				continue
			}
		case strings.Contains(err.Error(), "ROOST_STALE_ROUTES") && ctx.Err() == nil:
			// Routes changed since they were read: read them again and
			// send again, until the send's deadline (a churn of
			// subscriptions elsewhere must not refuse publishes here).
			t.f.stale.Add(1)
			t.invalidate()
			continue
		}
		t.f.failed.Add(1)
		return 0, fmt.Errorf("fabric: send: %w", err)
	}
}

type target struct {
	owner  string
	groups []string
	// sessions are the persistent sessions connected to the owner the
	// message is for.
	sessions []string
}

func (t *Tenant) targets(ctx context.Context, index *mqtt.TopicsIndex, m Message, local Local, nonce uint64) ([]target, []Copy) {
	servedHere := local.Group
	var copies []Copy
	byOwner := map[string]*target{}
	add := func(owner string) *target {
		tg := byOwner[owner]
		if tg == nil {
			tg = &target{owner: owner}
			byOwner[owner] = tg
		}
		return tg
	}
	if local.Turn != "" {
		m.Retain = false
	}
	if m.Retain {
		// Every present owner keeps the tenant's retained messages.
		t.mu.RLock()
		for _, owner := range t.present {
			if owner != t.owner {
				add(owner)
			}
		}
		t.mu.RUnlock()
	}
	t.mu.RLock()
	holders := t.holders
	t.mu.RUnlock()
	// session is a persistent session's subscription: queued if its QoS
	// is 1 or 2, and sent to the node its client is connected to.
	session := func(cid string, sub packets.Subscription) *target {
		if sub.NoLocal && cid == local.Publisher || local.Connected != nil && local.Connected(cid) {
			return nil
		}
		if q := min(m.QoS, sub.Qos); q > 0 {
			copies = append(copies, Copy{ClientID: cid, QoS: q})
		}
		holder := holders[cid]
		if holder == "" || holder == t.owner {
			return nil
		}
		tg := add(holder)
		if !slices.Contains(tg.sessions, cid) {
			tg.sessions = append(tg.sessions, cid)
		}
		return tg
	}
	subs := index.Subscribers(m.Topic)
	for owner, sub := range subs.Subscriptions {
		if local.Turn != "" {
			break
		}
		if cid, ok := strings.CutPrefix(owner, sessionMark); ok {
			session(cid, sub)
		} else if owner != t.owner {
			add(owner)
		}
	}
	for group, members := range subs.Shared {
		if local.Turn != "" && group != local.Turn {
			continue
		}
		if _, here := members[t.owner]; servedHere == nil && here || servedHere != nil && servedHere(group) {
			continue
		}
		// No member here takes it: another owner of the group does,
		// not this node, nor a session whose client is connected here.
		owners := make([]string, 0, len(members))
		for owner := range members {
			if cid, ok := strings.CutPrefix(owner, sessionMark); owner == t.owner || ok && holders[cid] == t.owner {
				continue
			}
			owners = append(owners, owner)
		}
		if len(owners) == 0 {
			continue
		}
		if local.Turn != "" {
			// A turn passed on goes to a persistent session's queue if
			// the group has one for it (a queue always takes it): another
			// node may have no member to take it either, and would not
			// pass it on again.
			queued := slices.DeleteFunc(slices.Clone(owners), func(o string) bool {
				return !strings.HasPrefix(o, sessionMark) || min(m.QoS, members[o].Qos) == 0
			})
			if len(queued) > 0 {
				owners = queued
			}
		}
		slices.Sort(owners)
		owner := owners[pickFor(nonce, group, len(owners))]
		if cid, ok := strings.CutPrefix(owner, sessionMark); ok {
			sub := members[owner]
			if min(m.QoS, sub.Qos) > 0 {
				// The group's turn falls to a persistent session: it is
				// queued for it alone (its node serves the group no
				// other way).
				session(cid, sub)
				continue
			}
			// At QoS 0 nothing is queued: the turn goes to the node the
			// session is connected to, for the group (whose members
			// there take it); with the session away, to a node with a
			// member, if any.
			if h := holders[cid]; h != "" && h != t.owner {
				owner = h
			} else if owner = nodeOwner(owners, nonce, group); owner == "" {
				continue
			}
		}
		tg := add(owner)
		if !slices.Contains(tg.groups, group) {
			tg.groups = append(tg.groups, group)
		}
	}
	out := make([]target, 0, len(byOwner))
	for _, tg := range byOwner {
		out = append(out, *tg)
	}
	slices.SortFunc(out, func(a, b target) int { return strings.Compare(a.owner, b.owner) })
	return out, copies
}

// read delivers the inbox, in order, until Leave.
func (t *Tenant) read(ctx context.Context) {
	defer close(t.stopped)
	last := "0-0"
	pending := true // a home first takes over what its predecessor left
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		var msgs []goredis.XMessage
		var err error
		switch {
		case t.owner == Home && pending:
			msgs, err = t.claimPending(ctx)
			if err == nil && len(msgs) == 0 {
				pending = false
				continue
			}
		case t.owner == Home:
			var res []goredis.XStream
			res, err = t.f.reads.XReadGroup(ctx, &goredis.XReadGroupArgs{
				Group: Home, Consumer: t.f.cfg.Node, Streams: []string{t.inbox, ">"}, Count: 256, Block: 2 * time.Second,
			}).Result()
			if len(res) > 0 {
				msgs = res[0].Messages
			}
		default:
			var res []goredis.XStream
			res, err = t.f.rdb.XRead(ctx, &goredis.XReadArgs{Streams: []string{t.inbox, last}, Count: 256, Block: 2 * time.Second}).Result()
			if len(res) > 0 {
				msgs = res[0].Messages
			}
		}
		if errors.Is(err, goredis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			t.f.cfg.Log.Warn("fabric: read an inbox", "tenant", t.name, "owner", t.owner, "err", err)
			// A home's read may have taken entries whose reply was lost:
			// they are pending for it, and read again from there.
			if t.owner == Home {
				pending = true
			}
			sleep(ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		done := make([]string, 0, len(msgs))
		for _, xm := range msgs {
			raw, _ := xm.Values["m"].(string)
			m, derr := decode([]byte(raw))
			if derr != nil {
				t.f.cfg.Log.Error("fabric: an inbox entry that is no message; dropped", "tenant", t.name, "id", xm.ID, "err", derr)
			} else if err := t.deliver(m); err != nil {
				// Left in the inbox: a home reads its pending entries
				// again; a node's clean subscribers miss it.
				t.f.cfg.Log.Warn("fabric: deliver a message from another node", "tenant", t.name, "topic", m.Topic, "err", err)
				if t.owner == Home {
					pending = true
					sleep(ctx, backoff)
					break
				}
			}
			t.f.received.Add(1)
			done = append(done, xm.ID)
			last = xm.ID
		}
		if len(done) > 0 {
			actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if t.owner == Home {
				pipe := t.f.rdb.TxPipeline()
				pipe.XAck(actx, t.inbox, Home, done...)
				pipe.XDel(actx, t.inbox, done...)
				_, err = pipe.Exec(actx)
			} else {
				err = t.f.rdb.XDel(actx, t.inbox, done...).Err()
			}
			if n, lerr := t.f.rdb.XLen(actx, t.inbox).Result(); lerr == nil {
				t.lag.Store(n)
			}
			cancel()
			if err != nil {
				t.f.cfg.Log.Warn("fabric: acknowledge inbox entries", "tenant", t.name, "err", err)
			}
		}
	}
}

// claimPending takes the home inbox's entries read but not acknowledged,
// by an earlier home or by this one before an error.
func (t *Tenant) claimPending(ctx context.Context) ([]goredis.XMessage, error) {
	msgs, _, err := t.f.rdb.XAutoClaim(ctx, &goredis.XAutoClaimArgs{
		Stream: t.inbox, Group: Home, Consumer: t.f.cfg.Node, MinIdle: 0, Start: "0-0", Count: 256,
	}).Result()
	return msgs, err
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// An entry: a version byte, flags (QoS in the low two bits, 4 = retain,
// 8 = sessions follow, 16 = passed), the number of groups, then topic, payload,
// properties and each group, each with its length; then, with flag 8, the
// number of session copies, each client id (with its length) and number,
// the kicked client id (with its length) and the epoch.
const encoding = 1

func encode(m Message) string {
	b := make([]byte, 0, 16+len(m.Topic)+len(m.Payload)+len(m.Props))
	flags := m.QoS & 3
	if m.Retain {
		flags |= 4
	}
	extra := len(m.Seqs) > 0 || m.Kick != ""
	if extra {
		flags |= 8
	}
	if m.Passed {
		flags |= 16
	}
	b = append(b, encoding, flags)
	b = binary.AppendUvarint(b, uint64(len(m.Groups)))
	str := func(s []byte) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	for _, s := range append([][]byte{[]byte(m.Topic), m.Payload, m.Props}, groups(m.Groups)...) {
		str(s)
	}
	if extra {
		b = binary.AppendUvarint(b, uint64(len(m.Seqs)))
		for cid, seq := range m.Seqs {
			str([]byte(cid))
			b = binary.AppendUvarint(b, seq)
		}
		str([]byte(m.Kick))
		b = binary.AppendUvarint(b, m.Epoch)
	}
	return string(b)
}

func groups(gs []string) [][]byte {
	out := make([][]byte, len(gs))
	for i, g := range gs {
		out[i] = []byte(g)
	}
	return out
}

var errEntry = errors.New("malformed entry")

func decode(b []byte) (Message, error) {
	if len(b) < 3 || b[0] != encoding {
		return Message{}, errEntry
	}
	flags := b[1]
	m := Message{QoS: flags & 3, Retain: flags&4 != 0, Passed: flags&16 != 0}
	b = b[2:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > 1<<16 {
		return Message{}, errEntry
	}
	b = b[k:]
	parts := make([][]byte, 3+n)
	for i := range parts {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return Message{}, errEntry
		}
		parts[i] = b[k : k+int(l)]
		b = b[k+int(l):]
	}
	m.Topic, m.Payload = string(parts[0]), parts[1]
	if len(parts[2]) > 0 {
		m.Props = parts[2]
	}
	for _, g := range parts[3:] {
		m.Groups = append(m.Groups, string(g))
	}
	if flags&8 == 0 {
		return m, nil
	}
	str := func() (string, bool) {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return "", false
		}
		s := string(b[k : k+int(l)])
		b = b[k+int(l):]
		return s, true
	}
	num := func() (uint64, bool) {
		v, k := binary.Uvarint(b)
		if k <= 0 {
			return 0, false
		}
		b = b[k:]
		return v, true
	}
	n, ok := num()
	if !ok || n > 1<<16 {
		return Message{}, errEntry
	}
	for range n {
		cid, ok1 := str()
		seq, ok2 := num()
		if !ok1 || !ok2 {
			return Message{}, errEntry
		}
		if m.Seqs == nil {
			m.Seqs = map[string]uint64{}
		}
		m.Seqs[cid] = seq
	}
	var ok1, ok2 bool
	m.Kick, ok1 = str()
	m.Epoch, ok2 = num()
	if !ok1 || !ok2 {
		return Message{}, errEntry
	}
	return m, nil
}

// nodeOwner chooses among the nodes in a shared group's owners (not the
// persistent sessions' own routes) as pickFor does; "" if there is none.
func nodeOwner(owners []string, nonce uint64, group string) string {
	nodes := slices.DeleteFunc(slices.Clone(owners), func(o string) bool { return strings.HasPrefix(o, sessionMark) })
	if len(nodes) == 0 {
		return ""
	}
	return nodes[pickFor(nonce, group, len(nodes))]
}

// pickFor chooses among a shared group's n owners for a send: the same
// choice for the same send (retried after stale routes, it picks the same
// member again), spread over the members across sends.
func pickFor(nonce uint64, group string, n int) int {
	h := fnv.New64a()
	h.Write([]byte(group))
	return int((h.Sum64() ^ nonce) % uint64(n))
}
