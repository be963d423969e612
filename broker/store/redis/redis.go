// Package redis is a session store on Redis (standalone or Cluster).
//
// Keys put each session's data in one hash slot, and never let two tenants'
// or two client ids' keys meet: the client id is base64url-encoded, so ':'
// and braces in it cannot change a key's shape or its hash tag.
//
//	<prefix>:{<tenant>:<b64 cid>}:s      session, JSON
//	<prefix>:{<tenant>:<b64 cid>}:q      queue: sorted set, score = seq, member = "<seq>:<message>"
//	<prefix>:{<tenant>:<b64 cid>}:seq    last sequence number given
//	<prefix>:{<tenant>}:sessions          set of the tenant's session ids (b64)
//	<prefix>:{<tenant>}:retained          hash: topic → message
package redis

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
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
	return s.prefix + ":{" + tenant + ":" + b64(cid) + "}:" + kind
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
	for i, id := range ids {
		gets[i] = pipe.Get(ctx, s.prefix+":{"+tenant+":"+id+"}:s")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, err
	}
	var out []store.Session
	for _, g := range gets {
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
		out = append(out, sess)
	}
	return out, nil
}

// DeleteSession removes the session and its queue; the sequence counter
// stays, so numbers are never reused.
func (s *Store) DeleteSession(ctx context.Context, tenant, clientID string) error {
	if err := s.rdb.SRem(ctx, s.tenantKey(tenant, "sessions"), b64(clientID)).Err(); err != nil {
		return err
	}
	return s.rdb.Del(ctx, s.sessionKey(tenant, clientID, "s"), s.sessionKey(tenant, clientID, "q")).Err()
}

// appendScript numbers and adds a session's messages in one atomic step,
// so no reader sees a number before the ones below it.
var appendScript = goredis.NewScript(`
local n = #ARGV
local last = redis.call('INCRBY', KEYS[2], n)
local first = last - n + 1
for i = 1, n do
  local seq = first + i - 1
  redis.call('ZADD', KEYS[1], seq, seq .. ':' .. ARGV[i])
end
return first`)

// Append stores each session's messages with one script call, all sessions
// in one pipelined round trip. Each session's part is atomic; a failure
// returns an error, so the publisher is not acknowledged.
func (s *Store) Append(ctx context.Context, tenant string, items []store.Item) ([]uint64, error) {
	type group struct {
		idx  []int
		args []any
	}
	groups := map[string]*group{}
	var order []string
	for i, it := range items {
		v, err := it.Message.MarshalBinary()
		if err != nil {
			return nil, err
		}
		g := groups[it.ClientID]
		if g == nil {
			g = &group{}
			groups[it.ClientID] = g
			order = append(order, it.ClientID)
		}
		g.idx = append(g.idx, i)
		g.args = append(g.args, v)
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*goredis.Cmd, len(order))
	for i, cid := range order {
		keys := []string{s.sessionKey(tenant, cid, "q"), s.sessionKey(tenant, cid, "seq")}
		cmds[i] = appendScript.Eval(ctx, pipe, keys, groups[cid].args...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("append to redis: %w", err)
	}
	seqs := make([]uint64, len(items))
	for i, cid := range order {
		first, err := cmds[i].Int64()
		if err != nil {
			return nil, err
		}
		for j, idx := range groups[cid].idx {
			seqs[idx] = uint64(first) + uint64(j)
		}
	}
	return seqs, nil
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
	members, err := s.rdb.ZRangeByScore(ctx, s.sessionKey(tenant, clientID, "q"), &goredis.ZRangeBy{
		Min: "(" + strconv.FormatUint(after, 10), Max: "+inf", Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, err
	}
	out := make([]store.Queued, 0, len(members))
	for _, m := range members {
		q, err := decodeMember(m)
		if err != nil {
			return nil, err
		}
		out = append(out, q)
	}
	return out, nil
}

func (s *Store) Trim(ctx context.Context, tenant, clientID string, upTo uint64) error {
	return s.rdb.ZRemRangeByScore(ctx, s.sessionKey(tenant, clientID, "q"), "-inf", strconv.FormatUint(upTo, 10)).Err()
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
