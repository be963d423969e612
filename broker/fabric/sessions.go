package fabric

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Persistent sessions live on any node (Sessions). A session's
// subscriptions are routes of their own, owned by the session ("@" and its
// client id), which outlive its connection: whoever publishes a message
// for it queues it in the session's queue (the session store) before the
// publisher's acknowledgement, then sends it to the node the session's
// client is connected to, if any, with the copy's number. The node it is
// connected to is in each of its routes (so that it changes with the
// routes' version) and in the tenant's "at" hash, which a node claiming
// the session reads to end the connection the other node still has.
//
//	<prefix>:{<tenant>}:routes       "@<client id>\x00<filter>" → "<qos>[n]|<owner or empty>"
//	<prefix>:{<tenant>}:sr:<client>  set: the session's filters
//	<prefix>:{<tenant>}:at           hash: client id → the owner its client was last connected to

// SessionOwner is an Owner of a fabric where persistent sessions live on
// any node; *Tenant is one.
type SessionOwner interface {
	Owner
	AddSession(ctx context.Context, clientID, filter string, qos byte, noLocal bool) error
	RemoveSession(ctx context.Context, clientID, filter string) error
	DropSession(ctx context.Context, clientID string, epoch uint64) error
	ExpireSession(ctx context.Context, clientID string) error
	Attach(ctx context.Context, clientID string, epoch uint64) error
	Kick(ctx context.Context, clientID string, epoch uint64) (bool, error)
	Release(ctx context.Context, clientID string, epoch uint64) error
	AwaitRelease(ctx context.Context, clientID string, epoch uint64) bool
	Detach(ctx context.Context, clientID string) error
	SendQueued(ctx context.Context, m Message, local Local) (int, error)
	CountSessions(ctx context.Context, clientID string) (n int64, known bool, err error)
}

var _ SessionOwner = (*Tenant)(nil)

// sessionMark starts a session's name among the owners: no node id starts
// with it (they are host names).
const sessionMark = "@"

// Sessions reports that persistent sessions may live on any node of this
// fabric.
func (f *Redis) Sessions() bool { return true }

// sessionRoute is a session route's value.
func sessionRoute(qos byte, noLocal bool, holder string) string {
	v := strconv.Itoa(int(qos))
	if noLocal {
		v += "n"
	}
	return v + "|" + holder
}

func parseSessionRoute(v string) (qos byte, noLocal bool, holder string) {
	opts, holder, _ := strings.Cut(v, "|")
	if opts != "" && opts[0] >= '0' && opts[0] <= '2' {
		qos = opts[0] - '0'
	}
	return qos, strings.Contains(opts, "n"), holder
}

// sessionRouteScript writes (ARGV[2] not empty) or removes a session's
// route, keeping its set of filters, and raises the version if anything
// changed.
//
// KEYS: routes, version, the session's filters. ARGV: field, value, channel,
// tenant, filter.
var sessionRouteScript = goredis.NewScript(`
local old = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  if not old then return 0 end
  redis.call('HDEL', KEYS[1], ARGV[1]); redis.call('SREM', KEYS[3], ARGV[5])
else
  if old == ARGV[2] then return 0 end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]); redis.call('SADD', KEYS[3], ARGV[5])
end
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
`)

// AddSession writes a persistent session's route for a filter (its client
// connected here), before the SUBACK.
func (t *Tenant) AddSession(ctx context.Context, clientID, filter string, qos byte, noLocal bool) error {
	return t.sessionRoute(ctx, clientID, filter, sessionRoute(qos, noLocal, t.owner))
}

// RemoveSession takes a persistent session's route away (it unsubscribed).
func (t *Tenant) RemoveSession(ctx context.Context, clientID, filter string) error {
	return t.sessionRoute(ctx, clientID, filter, "")
}

func (t *Tenant) sessionRoute(ctx context.Context, clientID, filter, value string) error {
	keys := []string{t.routes, t.version, t.f.key(t.name, "sr:"+clientID)}
	if err := sessionRouteScript.Run(ctx, t.f.rdb, keys, sessionMark+clientID+"\x00"+filter, value, t.f.channel(), t.name, filter).Err(); err != nil {
		return fmt.Errorf("fabric: session route %q: %w", filter, err)
	}
	t.invalidate()
	return nil
}

// attachScript sets the owner a session's client is connected to (ARGV[2];
// empty: none, and only if it was ARGV[7]) in the session's routes, and
// the last one in the at hash, or (ARGV[8] "1" or "2") ends the session:
// its routes go. Given a kick entry (ARGV[6]: a claim was made here), the
// owner the session's client was last on, if another, gets it: it ends
// its connection and drops a Will it holds back for the session. Without
// one, the session is not ended while a route of it is held by an owner
// with a membership (KEYS[5]): with "1", another owner (this one's client
// is the connection ending it); with "2", any (an expiry: a client
// connected anywhere, this node included, claimed it since the record
// was deleted, and its routes are its own). It returns 0 when it changed
// nothing.
//
// KEYS: routes, version, at, the session's filters, members. ARGV: client
// id, owner, channel, tenant, inbox key prefix, kick entry, detaching
// owner, drop, cap.
var attachScript = goredis.NewScript(`
local drop = ARGV[8] ~= '0'
local old = redis.call('HGET', KEYS[3], ARGV[1])
if ARGV[2] == '' and not drop and old ~= ARGV[7] then return 0 end
if drop and ARGV[6] == '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local prefix = '@' .. ARGV[1] .. '\0'
  for _, f in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local v = redis.call('HGET', KEYS[1], prefix .. f)
    local holder = v and string.match(v, '|(.*)$') or ''
    if holder ~= '' and (holder ~= ARGV[7] or ARGV[8] == '2') then
      local deadline = tonumber(redis.call('HGET', KEYS[5], holder))
      if deadline and deadline >= now then return 0 end
    end
  end
end
if drop then redis.call('HDEL', KEYS[3], ARGV[1]) elseif ARGV[2] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[2]) end
local prefix = '@' .. ARGV[1] .. '\0'
for _, f in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local field = prefix .. f
  if drop then
    redis.call('HDEL', KEYS[1], field)
  else
    local v = redis.call('HGET', KEYS[1], field)
    if v then redis.call('HSET', KEYS[1], field, string.match(v, '^[^|]*') .. '|' .. ARGV[2]) end
  end
end
if drop then redis.call('DEL', KEYS[4]) end
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
if ARGV[6] ~= '' and old and old ~= ARGV[7] then
  if old == 'home' then redis.call('XADD', ARGV[5] .. old, '*', 'm', ARGV[6])
  else redis.call('XADD', ARGV[5] .. old, 'MAXLEN', '~', ARGV[9], '*', 'm', ARGV[6]) end
end
return 1
`)

// How attach changes a session (attachScript's ARGV[8]).
const (
	attachOnly = "0" // attach or detach
	dropEnded  = "1" // end it, unless another live owner holds it
	dropExpiry = "2" // end it, unless any live owner holds it
)

// Attach records that a persistent session's client is connected here,
// under the claim epoch: messages for it come here from now on, and the
// node it was connected to before is told to end that connection.
func (t *Tenant) Attach(ctx context.Context, clientID string, epoch uint64) error {
	return t.attach(ctx, clientID, t.owner, epoch, attachOnly)
}

// kickScript tells the owner a session's client was last connected to
// (the at hash), if another than ARGV[2], that the session was claimed
// elsewhere: the kick entry ARGV[4] goes to its inbox. It returns 0 if
// there was no such owner, 1 if it was told, 2 if it was told but has not
// renewed its membership for a while (its lease has less than ARGV[6] ms
// left, or it has none: dead, or cut off), so it will not answer soon.
//
// KEYS: at, members. ARGV: client id, owner, inbox key prefix, kick entry,
// cap, fresh lease ms.
var kickScript = goredis.NewScript(`
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or old == ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(redis.call('HGET', KEYS[2], old))
if old == 'home' then redis.call('XADD', ARGV[3] .. old, '*', 'm', ARGV[4])
else redis.call('XADD', ARGV[3] .. old, 'MAXLEN', '~', ARGV[5], '*', 'm', ARGV[4]) end
if not deadline or deadline - now < tonumber(ARGV[6]) then return 2 end
return 1
`)

// Kick tells the node a persistent session's client was last connected
// to, if another, that the session was claimed here (epoch), before the
// connection claiming it gets its CONNACK, and reports whether there was
// such a node that renews its membership (it has within the last two
// renewals): that node ends its connection before it delivers anything
// sent to it after the kick, and then releases the session (see Release,
// AwaitRelease). A node that stopped renewing is told all the same, but
// not reported: waiting for it would hold the connection up for nothing.
// (Attach, after the CONNACK, moves the session's routes here and kicks
// again.)
func (t *Tenant) Kick(ctx context.Context, clientID string, epoch uint64) (bool, error) {
	fresh := t.f.cfg.Lease - 2*(t.f.cfg.Lease/5) - t.f.cfg.Lease/10 // two renewals missed, and some slack
	n, err := kickScript.Run(ctx, t.f.rdb, []string{t.f.key(t.name, "at"), t.members}, clientID, t.owner, t.f.key(t.name, "in:"),
		encode(Message{Kick: clientID, Epoch: epoch}), strconv.FormatInt(t.f.cfg.InboxLength, 10), fresh.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("fabric: kick session %q: %w", clientID, err)
	}
	return n == 1, nil
}

// releaseFor is how long a release stays readable: far longer than a
// claimant waits for it.
const releaseFor = time.Minute

// Release records that this node let go of a session claimed elsewhere
// (epoch): its connection is ended, and no copy this node queued for the
// session from its own publishers is still being written.
func (t *Tenant) Release(ctx context.Context, clientID string, epoch uint64) error {
	if err := t.f.rdb.Set(ctx, t.f.key(t.name, "rel:"+clientID), strconv.FormatUint(epoch, 10), releaseFor).Err(); err != nil {
		return fmt.Errorf("fabric: release session %q: %w", clientID, err)
	}
	return nil
}

// AwaitRelease waits until the node told by Kick released the session
// claimed with epoch, and reports whether it did before ctx ended: then
// everything that node queued for the session is in its queue, to be read
// in order before anything queued after.
func (t *Tenant) AwaitRelease(ctx context.Context, clientID string, epoch uint64) bool {
	key, want := t.f.key(t.name, "rel:"+clientID), strconv.FormatUint(epoch, 10)
	for {
		if v, err := t.f.rdb.Get(ctx, key).Result(); err == nil && v == want {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Detach records that the session's client left this node (if it was
// here): its messages are queued, and sent nowhere, until it connects.
func (t *Tenant) Detach(ctx context.Context, clientID string) error {
	return t.attach(ctx, clientID, "", 0, attachOnly)
}

// DropSession removes a session's routes: it ended (a clean start, a
// connection that resumed it without keeping it, its expiry as its client
// leaves). With the epoch of a claim made here (a connection discarding
// or resuming it), the node its client was last on is told to end that
// connection. Without one (epoch 0: the connection ending it is this
// node's) it leaves a session whose routes another live node holds: that
// node's client claimed it since.
func (t *Tenant) DropSession(ctx context.Context, clientID string, epoch uint64) error {
	return t.attach(ctx, clientID, "", epoch, dropEnded)
}

// ExpireSession removes the routes of a session whose record was deleted
// as expired, unless a client connected to any live node, this one
// included, holds them: it claimed the session after the deletion, and
// the routes are its new session's.
func (t *Tenant) ExpireSession(ctx context.Context, clientID string) error {
	return t.attach(ctx, clientID, "", 0, dropExpiry)
}

func (t *Tenant) attach(ctx context.Context, clientID, owner string, epoch uint64, d string) error {
	keys := []string{t.routes, t.version, t.f.key(t.name, "at"), t.f.key(t.name, "sr:"+clientID), t.members}
	kick := ""
	if epoch > 0 {
		kick = encode(Message{Kick: clientID, Epoch: epoch})
	}
	err := attachScript.Run(ctx, t.f.rdb, keys, clientID, owner, t.f.channel(), t.name, t.f.key(t.name, "in:"), kick, t.owner, d,
		strconv.FormatInt(t.f.cfg.InboxLength, 10)).Err()
	if err != nil {
		return fmt.Errorf("fabric: session %q: %w", clientID, err)
	}
	t.invalidate()
	return nil
}

// CountSessions reports how many of the tenant's sessions live on any
// node (attached to one, or waiting for their client: the at hash) and
// whether clientID's is one of them, in one round trip.
func (t *Tenant) CountSessions(ctx context.Context, clientID string) (n int64, known bool, err error) {
	at := t.f.key(t.name, "at")
	pipe := t.f.rdb.Pipeline()
	count, exists := pipe.HLen(ctx, at), pipe.HExists(ctx, at, clientID)
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, false, fmt.Errorf("fabric: count sessions: %w", err)
	}
	return count.Val(), exists.Val(), nil
}

// SessionFilter is one of a persistent session's subscriptions, as a route.
type SessionFilter struct {
	Filter  string
	QoS     byte
	NoLocal bool
}

// seedScript sets a session's routes to exactly the filters given, held by
// no node, and makes this owner the one its client was last on (so that a
// claim elsewhere tells it: it may hold the session's Will), unless the
// session's client is connected to a node now (a route of its names one):
// then it leaves everything as it is and returns 0.
//
// KEYS: routes, version, at, the session's filters. ARGV: client id, owner,
// channel, tenant, then pairs of filter and route value.
var seedScript = goredis.NewScript(`
local prefix = '@' .. ARGV[1] .. '\0'
local old = redis.call('SMEMBERS', KEYS[4])
for _, f in ipairs(old) do
  local v = redis.call('HGET', KEYS[1], prefix .. f)
  if v and string.match(v, '|(.*)$') ~= '' then return 0 end
end
for _, f in ipairs(old) do redis.call('HDEL', KEYS[1], prefix .. f) end
redis.call('DEL', KEYS[4])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], prefix .. ARGV[i], ARGV[i+1])
  redis.call('SADD', KEYS[4], ARGV[i])
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
`)

// Seed is a persistent session to write the routes of (see SeedSessions).
type Seed struct {
	ClientID string
	Filters  []SessionFilter
}

// seedBatch is how many sessions one round trip seeds.
const seedBatch = 200

// SeedSessions writes the routes of a tenant's persistent sessions whose
// clients are not connected, from their stored subscriptions: a tenant
// served by one node, which kept its sessions to itself, about to be
// served by several. This node becomes the one each session's client was
// last on (a claim elsewhere tells it: it holds their Wills). A session
// whose client is connected to a node already (a route of its names one)
// is left as it is. It returns the client ids of the sessions seeded.
func (f *Redis) SeedSessions(ctx context.Context, tenant string, seeds []Seed) ([]string, error) {
	var seeded []string
	for len(seeds) > 0 {
		batch := seeds[:min(len(seeds), seedBatch)]
		seeds = seeds[len(batch):]
		pipe := f.rdb.Pipeline()
		cmds := make([]*goredis.Cmd, len(batch))
		for i, sd := range batch {
			keys := []string{f.key(tenant, "routes"), f.key(tenant, "rv"), f.key(tenant, "at"), f.key(tenant, "sr:"+sd.ClientID)}
			args := []any{sd.ClientID, f.cfg.Node, f.channel(), tenant}
			for _, fl := range sd.Filters {
				args = append(args, fl.Filter, sessionRoute(fl.QoS, fl.NoLocal, ""))
			}
			cmds[i] = seedScript.Eval(ctx, pipe, keys, args...)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return seeded, fmt.Errorf("fabric: seed sessions of %s: %w", tenant, err)
		}
		for i, c := range cmds {
			if n, _ := c.Int(); n == 1 {
				seeded = append(seeded, batch[i].ClientID)
			}
		}
	}
	if t := f.tenant(tenant); t != nil {
		t.invalidate()
	}
	return seeded, nil
}
