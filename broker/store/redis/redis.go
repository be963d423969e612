// Package redis is a session store on Redis (standalone or Cluster).
//
// Every key of a tenant carries the tenant as its hash tag, so a Redis
// Cluster keeps the tenant in one slot: a publish is queued for all its
// sessions, together with the publisher's QoS 2 receipt, by one atomic
// script. Cluster spreads tenants over its shards, not one tenant's
// sessions. Client ids are base64url-encoded, so ':' and braces in them
// cannot change a key's shape or its hash tag, and no two tenants' or two
// client ids' keys meet.
//
//	<prefix>:{<tenant>}:<b64 cid>:s      session, JSON
//	<prefix>:{<tenant>}:<b64 cid>:q      queue: sorted set, score = seq, member = "<seq>:<message>"
//	<prefix>:{<tenant>}:<b64 cid>:seq    last sequence number given
//	<prefix>:{<tenant>}:<b64 cid>:d      QoS 2 marks: hash, seq → "<packet id>:<released 0|1>"
//	<prefix>:{<tenant>}:<b64 cid>:r      receipts: set of the publisher's QoS 2 packet ids
//	<prefix>:{<tenant>}:sessions          set of the tenant's session ids (b64)
//	<prefix>:{<tenant>}:retained          hash: topic → message
package redis

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/roosthub/roost/broker/store"
)

// Config names the server.
type Config struct {
	// URL is redis://[user:password@]host:port[/db].
	URL string
	// Prefix starts every key; "roost" if empty.
	Prefix string
}

// Store is a session store on Redis.
type Store struct {
	rdb    *goredis.Client
	prefix string
}

// New connects and checks that the server answers.
func New(ctx context.Context, cfg Config) (*Store, error) {
	opts, err := goredis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("redis URL: %w", err)
	}
	rdb := goredis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("connect to redis: %w", err)
	}
	p := cfg.Prefix
	if p == "" {
		p = "roost"
	}
	return &Store{rdb: rdb, prefix: p}, nil
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func (s *Store) sessionKey(tenant, cid, kind string) string {
	return s.prefix + ":{" + tenant + "}:" + b64(cid) + ":" + kind
}

func (s *Store) tenantKey(tenant, kind string) string {
	return s.prefix + ":{" + tenant + "}:" + kind
}

func (s *Store) SaveSession(ctx context.Context, tenant string, sess store.Session) error {
	v, err := json.Marshal(sess)
	if err != nil {
		return err
	}
	// The record first, then the index: a crash between them leaves a
	// record nobody lists, never a listed session without a record.
	if err := s.rdb.Set(ctx, s.sessionKey(tenant, sess.ClientID, "s"), v, 0).Err(); err != nil {
		return err
	}
	return s.rdb.SAdd(ctx, s.tenantKey(tenant, "sessions"), b64(sess.ClientID)).Err()
}

func (s *Store) Sessions(ctx context.Context, tenant string) ([]store.Session, error) {
	ids, err := s.rdb.SMembers(ctx, s.tenantKey(tenant, "sessions")).Result()
	if err != nil {
		return nil, err
	}
	pipe := s.rdb.Pipeline()
	gets := make([]*goredis.StringCmd, len(ids))
	receipts := make([]*goredis.StringSliceCmd, len(ids))
	for i, id := range ids {
		k := s.prefix + ":{" + tenant + "}:" + id + ":"
		gets[i] = pipe.Get(ctx, k+"s")
		receipts[i] = pipe.SMembers(ctx, k+"r")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, err
	}
	var out []store.Session
	for i, g := range gets {
		v, err := g.Bytes()
		if errors.Is(err, goredis.Nil) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var sess store.Session
		if err := json.Unmarshal(v, &sess); err != nil {
			return nil, err
		}
		for _, m := range receipts[i].Val() {
			id, err := strconv.ParseUint(m, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("damaged receipt %q", m)
			}
			sess.PendingRelease = append(sess.PendingRelease, uint16(id))
		}
		slices.Sort(sess.PendingRelease)
		out = append(out, sess)
	}
	return out, nil
}

// DeleteSession removes the session, its queue, marks and receipts; the
// sequence counter stays, so numbers are never reused.
func (s *Store) DeleteSession(ctx context.Context, tenant, clientID string) error {
	if err := s.rdb.SRem(ctx, s.tenantKey(tenant, "sessions"), b64(clientID)).Err(); err != nil {
		return err
	}
	k := func(kind string) string { return s.sessionKey(tenant, clientID, kind) }
	return s.rdb.Del(ctx, k("s"), k("q"), k("d"), k("r")).Err()
}

// appendScript numbers and adds the messages of every session of one
// publish, and records the publisher's receipt, in one atomic step: no
// reader sees a number before the ones below it, and a crash stores all of
// it or none.
//
// KEYS: per session its queue and counter, then the receipt set.
// ARGV: the number of sessions, the receipt's packet id ("" for none), per
// session its message count, then the messages in session order.
var appendScript = goredis.NewScript(`
local g = tonumber(ARGV[1])
local pos = 3 + g
local firsts = {}
for i = 1, g do
  local n = tonumber(ARGV[2 + i])
  local last = redis.call('INCRBY', KEYS[2*i], n)
  local first = last - n + 1
  for j = 0, n - 1 do
    redis.call('ZADD', KEYS[2*i-1], first + j, (first + j) .. ':' .. ARGV[pos])
    pos = pos + 1
  end
  firsts[i] = first
end
if ARGV[2] ~= '' then
  redis.call('SADD', KEYS[2*g+1], ARGV[2])
end
return firsts`)

// Append stores a publish for all its sessions, and the receipt, with one
// script call. A failure returns an error, so the publisher is not
// acknowledged.
func (s *Store) Append(ctx context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error) {
	groups := map[string][]int{}
	var order []string
	for i, it := range items {
		if groups[it.ClientID] == nil {
			order = append(order, it.ClientID)
		}
		groups[it.ClientID] = append(groups[it.ClientID], i)
	}
	keys := make([]string, 0, 2*len(order)+1)
	args := make([]any, 0, 2+len(order)+len(items))
	args = append(args, len(order), "")
	if r.ClientID != "" {
		args[1] = strconv.Itoa(int(r.PacketID))
	}
	for _, cid := range order {
		keys = append(keys, s.sessionKey(tenant, cid, "q"), s.sessionKey(tenant, cid, "seq"))
		args = append(args, len(groups[cid]))
	}
	keys = append(keys, s.sessionKey(tenant, r.ClientID, "r"))
	for _, cid := range order {
		for _, i := range groups[cid] {
			v, err := items[i].Message.MarshalBinary()
			if err != nil {
				return nil, err
			}
			args = append(args, v)
		}
	}
	firsts, err := appendScript.Run(ctx, s.rdb, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("append to redis: %w", err)
	}
	if len(firsts) != len(order) {
		return nil, fmt.Errorf("append to redis: %d numbers for %d queues", len(firsts), len(order))
	}
	seqs := make([]uint64, len(items))
	for g, cid := range order {
		for j, i := range groups[cid] {
			seqs[i] = uint64(firsts[g]) + uint64(j)
		}
	}
	return seqs, nil
}

func (s *Store) Release(ctx context.Context, tenant, clientID string, packetID uint16) error {
	return s.rdb.SRem(ctx, s.sessionKey(tenant, clientID, "r"), strconv.Itoa(int(packetID))).Err()
}

// markScript sets a mark only while its message is queued.
var markScript = goredis.NewScript(`
if redis.call('ZCOUNT', KEYS[1], ARGV[1], ARGV[1]) > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 0`)

func (s *Store) Mark(ctx context.Context, tenant, clientID string, seq uint64, packetID uint16, released bool) error {
	v := strconv.Itoa(int(packetID)) + ":0"
	if released {
		v = strconv.Itoa(int(packetID)) + ":1"
	}
	keys := []string{s.sessionKey(tenant, clientID, "q"), s.sessionKey(tenant, clientID, "d")}
	return markScript.Run(ctx, s.rdb, keys, strconv.FormatUint(seq, 10), v).Err()
}

func decodeMember(member string) (store.Queued, error) {
	n, rest, ok := strings.Cut(member, ":")
	seq, err := strconv.ParseUint(n, 10, 64)
	if !ok || err != nil {
		return store.Queued{}, fmt.Errorf("damaged queue entry")
	}
	q := store.Queued{Seq: seq}
	return q, q.Message.UnmarshalBinary([]byte(rest))
}

func (s *Store) Read(ctx context.Context, tenant, clientID string, after uint64, limit int) ([]store.Queued, error) {
	pipe := s.rdb.Pipeline()
	read := pipe.ZRangeByScore(ctx, s.sessionKey(tenant, clientID, "q"), &goredis.ZRangeBy{
		Min: "(" + strconv.FormatUint(after, 10), Max: "+inf", Count: int64(limit),
	})
	marks := pipe.HGetAll(ctx, s.sessionKey(tenant, clientID, "d"))
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	out := make([]store.Queued, 0, len(read.Val()))
	for _, m := range read.Val() {
		q, err := decodeMember(m)
		if err != nil {
			return nil, err
		}
		if mark, ok := marks.Val()[strconv.FormatUint(q.Seq, 10)]; ok {
			id, rel, _ := strings.Cut(mark, ":")
			n, err := strconv.ParseUint(id, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("damaged mark %q", mark)
			}
			q.PacketID, q.Released = uint16(n), rel == "1"
		}
		out = append(out, q)
	}
	return out, nil
}

// trimScript deletes a queue's messages up to a number, and their marks.
var trimScript = goredis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('HLEN', KEYS[2]) > 0 then
  local up = tonumber(ARGV[1])
  for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
    if tonumber(f) <= up then
      redis.call('HDEL', KEYS[2], f)
    end
  end
end
return 0`)

func (s *Store) Trim(ctx context.Context, tenant, clientID string, upTo uint64) error {
	keys := []string{s.sessionKey(tenant, clientID, "q"), s.sessionKey(tenant, clientID, "d")}
	return trimScript.Run(ctx, s.rdb, keys, strconv.FormatUint(upTo, 10)).Err()
}

func (s *Store) QueueInfo(ctx context.Context, tenant, clientID string) (store.QueueInfo, error) {
	q, seq := s.sessionKey(tenant, clientID, "q"), s.sessionKey(tenant, clientID, "seq")
	pipe := s.rdb.Pipeline()
	card := pipe.ZCard(ctx, q)
	first := pipe.ZRange(ctx, q, 0, 0)
	last := pipe.Get(ctx, seq)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return store.QueueInfo{}, err
	}
	var info store.QueueInfo
	info.Len = int(card.Val())
	if ms := first.Val(); len(ms) == 1 {
		head, err := decodeMember(ms[0])
		if err != nil {
			return info, err
		}
		info.MinSeq, info.Oldest = head.Seq, head.Created
	}
	if v, err := last.Uint64(); err == nil {
		info.MaxSeq = v
	}
	return info, nil
}

func (s *Store) SetRetained(ctx context.Context, tenant string, m store.Message) error {
	k := s.tenantKey(tenant, "retained")
	if len(m.Payload) == 0 {
		return s.rdb.HDel(ctx, k, m.Topic).Err()
	}
	v, err := m.MarshalBinary()
	if err != nil {
		return err
	}
	return s.rdb.HSet(ctx, k, m.Topic, v).Err()
}

func (s *Store) Retained(ctx context.Context, tenant string) ([]store.Message, error) {
	all, err := s.rdb.HGetAll(ctx, s.tenantKey(tenant, "retained")).Result()
	if err != nil {
		return nil, err
	}
	out := make([]store.Message, 0, len(all))
	for _, v := range all {
		var m store.Message
		if err := m.UnmarshalBinary([]byte(v)); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Close closes the connection pool.
func (s *Store) Close() error {
	err := s.rdb.Close()
	if errors.Is(err, goredis.ErrClosed) {
		return nil
	}
	return err
}
