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
//	<prefix>:{<tenant>}:<b64 cid>:e      the session's epoch (see store.ErrFenced)
//	<prefix>:{<tenant>}:sessions          set of the tenant's session ids (b64)
//	<prefix>:{<tenant>}:retained          hash: topic → message
//
// The owner's writes are scripts that check the session's epoch first, so
// that the check and the write are one atomic step.
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
	"github.com/roosthub/roost/internal/group"
	"github.com/roosthub/roost/internal/redisretry"
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
	rdb *goredis.Client
	// appendRdb sends Append's script calls, never twice (see open).
	appendRdb *goredis.Client
	prefix    string

	// appends group-sends Append's script calls.
	appends group.Commit[*appendReq]
}

// New connects and checks that the server answers.
func New(ctx context.Context, cfg Config) (*Store, error) {
	opts, err := goredis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("redis URL: %w", err)
	}
	return open(ctx, cfg, opts)
}

// open makes the store's two clients with opts. The appends' client never
// sends a command again: go-redis by default retries one whose connection
// failed, even once it was written and its reply is what was lost, and
// Redis may then have run it. (Append sends one again itself where Redis
// says it did not run it: redisretry.) An Append run twice would store its
// messages twice, under new numbers (a QoS 2 message delivered twice); its
// caller is told it failed instead, and the publisher, not acknowledged,
// sends it again (a QoS 2 publish then meets its receipt). Every other
// command is safe to send again, and keeps go-redis's retries. A pooled
// connection the server closed (a restart, an idle timeout) is seen
// closed when it is taken from the pool, and dialled again, over TLS too
// (redisretry.CheckClosedTLS); one closed while a command is on it fails
// that command.
func open(ctx context.Context, cfg Config, opts *goredis.Options) (*Store, error) {
	redisretry.CheckClosedTLS(opts)
	rdb := goredis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("connect to redis: %w", err)
	}
	once := *opts
	once.MaxRetries = -1
	p := cfg.Prefix
	if p == "" {
		p = "roost"
	}
	s := &Store{rdb: rdb, appendRdb: goredis.NewClient(&once), prefix: p}
	s.appends.Max = maxGroup
	return s, nil
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func (s *Store) sessionKey(tenant, cid, kind string) string {
	return s.prefix + ":{" + tenant + "}:" + b64(cid) + ":" + kind
}

func (s *Store) tenantKey(tenant, kind string) string {
	return s.prefix + ":{" + tenant + "}:" + kind
}

// fenceLua starts every script that writes for a session's owner: KEYS[1]
// is the session's epoch and ARGV[1] the writer's.
const fenceLua = `
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then
  return redis.error_reply('ROOST_FENCED stale session epoch')
end
`

// fenced turns a script's refusal into store.ErrFenced.
func fenced(err error) error {
	if err != nil && strings.Contains(err.Error(), "ROOST_FENCED") {
		return store.ErrFenced
	}
	return err
}

func epochArg(epoch uint64) string { return strconv.FormatUint(epoch, 10) }

func (s *Store) Claim(ctx context.Context, tenant, clientID string) (uint64, error) {
	e, err := s.rdb.Incr(ctx, s.sessionKey(tenant, clientID, "e")).Uint64()
	if err != nil {
		return 0, fmt.Errorf("claim a session in redis: %w", err)
	}
	return e, nil
}

// saveScript writes the record, then the index: nobody lists a session
// without a record.
var saveScript = goredis.NewScript(fenceLua + `
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 0`)

func (s *Store) SaveSession(ctx context.Context, tenant string, sess store.Session) error {
	v, err := json.Marshal(sess)
	if err != nil {
		return err
	}
	keys := []string{s.sessionKey(tenant, sess.ClientID, "e"), s.sessionKey(tenant, sess.ClientID, "s"), s.tenantKey(tenant, "sessions")}
	return fenced(saveScript.Run(ctx, s.rdb, keys, epochArg(sess.Epoch), v, b64(sess.ClientID)).Err())
}

func (s *Store) Sessions(ctx context.Context, tenant string) ([]store.Session, error) {
	ids, err := s.rdb.SMembers(ctx, s.tenantKey(tenant, "sessions")).Result()
	if err != nil {
		return nil, err
	}
	pipe := s.rdb.Pipeline()
	gets := make([]*goredis.StringCmd, len(ids))
	epochs := make([]*goredis.StringCmd, len(ids))
	receipts := make([]*goredis.StringSliceCmd, len(ids))
	for i, id := range ids {
		k := s.prefix + ":{" + tenant + "}:" + id + ":"
		gets[i] = pipe.Get(ctx, k+"s")
		epochs[i] = pipe.Get(ctx, k+"e")
		receipts[i] = pipe.SMembers(ctx, k+"r")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return nil, err
	}
	var out []store.Session
	for i := range ids {
		sess, found, err := decodeSession(gets[i], epochs[i], receipts[i])
		if err != nil {
			return nil, err
		}
		if found {
			out = append(out, sess)
		}
	}
	return out, nil
}

// Session reads the session's record, epoch and receipts in one pipelined
// round trip: the tenant's index is not read.
func (s *Store) Session(ctx context.Context, tenant, clientID string) (store.Session, bool, error) {
	k := func(kind string) string { return s.sessionKey(tenant, clientID, kind) }
	pipe := s.rdb.Pipeline()
	rec := pipe.Get(ctx, k("s"))
	epoch := pipe.Get(ctx, k("e"))
	receipts := pipe.SMembers(ctx, k("r"))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return store.Session{}, false, err
	}
	return decodeSession(rec, epoch, receipts)
}

// decodeSession decodes a session's record and fills in its pending
// releases, sorted, and its epoch (0 if it was never claimed), from the
// replies of one pipeline; found is false if the session has no record.
func decodeSession(rec, epoch *goredis.StringCmd, receipts *goredis.StringSliceCmd) (sess store.Session, found bool, err error) {
	v, err := rec.Bytes()
	if errors.Is(err, goredis.Nil) {
		return store.Session{}, false, nil
	}
	if err != nil {
		return store.Session{}, false, err
	}
	if err := json.Unmarshal(v, &sess); err != nil {
		return store.Session{}, false, err
	}
	ms, err := receipts.Result()
	if err != nil {
		return store.Session{}, false, err
	}
	for _, m := range ms {
		id, err := strconv.ParseUint(m, 10, 16)
		if err != nil {
			return store.Session{}, false, fmt.Errorf("damaged receipt %q", m)
		}
		sess.PendingRelease = append(sess.PendingRelease, uint16(id))
	}
	slices.Sort(sess.PendingRelease)
	switch e, err := epoch.Uint64(); {
	case err == nil:
		sess.Epoch = e
	case !errors.Is(err, goredis.Nil):
		return store.Session{}, false, fmt.Errorf("session epoch: %w", err)
	}
	return sess, true, nil
}

// deleteScript drops a session from the index, then its record, queue,
// marks and receipts; the sequence counter and the epoch stay, so neither
// is ever reused.
var deleteScript = goredis.NewScript(fenceLua + `
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return 0`)

// DeleteSession removes the session, its queue, marks and receipts.
func (s *Store) DeleteSession(ctx context.Context, tenant, clientID string, epoch uint64) error {
	k := func(kind string) string { return s.sessionKey(tenant, clientID, kind) }
	keys := []string{k("e"), s.tenantKey(tenant, "sessions"), k("s"), k("q"), k("d"), k("r")}
	return fenced(deleteScript.Run(ctx, s.rdb, keys, epochArg(epoch), b64(clientID)).Err())
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
//
// Appends are group-sent: one caller at a time, the leader, takes every
// append waiting and sends their script calls in one pipeline, one write
// and one read for all (the round trip's two system calls are most of what
// an append costs the broker). Each append is still its own script call,
// atomic on its own and in its own tenant's slot, and fails or succeeds on
// its own; only a failure of the connection fails the whole pipeline, as
// the outcome of every call in it is then unknown.
//
// The leader is a caller, not a goroutine of the store's: an append that
// finds no send in progress sends at once, on its own goroutine, as a
// single script call (EVALSHA, EVAL if Redis lost the script). Appends that
// come during a send queue; once the leader has its reply it hands the
// lead to the first of them, which sends all that queued, and returns
// (internal/group, as the embedded store's commits).
//
// An append still waiting in the queue when ctx ends is taken out of it
// and fails with ctx's error; once a leader has taken it, its outcome is
// awaited whatever ctx says: it may be stored already. Close fails a send
// in progress (it closes the connections), so a leader always returns.
func (s *Store) Append(ctx context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	groups := map[string][]int{}
	var order []string
	for i, it := range items {
		if groups[it.ClientID] == nil {
			order = append(order, it.ClientID)
		}
		groups[it.ClientID] = append(groups[it.ClientID], i)
	}
	req := &appendReq{keys: make([]string, 0, 2*len(order)+1), args: make([]any, 0, 2+len(order)+len(items))}
	req.args = append(req.args, len(order), "")
	if r.ClientID != "" {
		req.args[1] = strconv.Itoa(int(r.PacketID))
	}
	for _, cid := range order {
		req.keys = append(req.keys, s.sessionKey(tenant, cid, "q"), s.sessionKey(tenant, cid, "seq"))
		req.args = append(req.args, len(groups[cid]))
	}
	req.keys = append(req.keys, s.sessionKey(tenant, r.ClientID, "r"))
	for _, cid := range order {
		for _, i := range groups[cid] {
			v, err := items[i].Message.MarshalBinary()
			if err != nil {
				return nil, err
			}
			req.args = append(req.args, v)
		}
	}

	// Sent again only where Redis says it did not run it (see open).
	for attempt := 1; ; attempt++ {
		req.ctx = ctx
		if err := s.appends.Do(ctx, req, s.send); err != nil {
			return nil, err
		}
		if attempt == redisretry.Attempts || !redisretry.Unrun(req.err) {
			break
		}
		if err := redisretry.Wait(ctx, attempt); err != nil {
			return nil, err
		}
		req.firsts, req.err = nil, nil
	}

	if req.err != nil {
		return nil, fmt.Errorf("append to redis: %w", req.err)
	}
	if len(req.firsts) != len(order) {
		return nil, fmt.Errorf("append to redis: %d numbers for %d queues", len(req.firsts), len(order))
	}
	seqs := make([]uint64, len(items))
	for g, cid := range order {
		for j, i := range groups[cid] {
			seqs[i] = uint64(req.firsts[g]) + uint64(j)
		}
	}
	return seqs, nil
}

// appendReq is one Append's script call and, once sent, its reply.
type appendReq struct {
	ctx    context.Context
	keys   []string
	args   []any
	firsts []int64
	err    error
}

// maxGroup bounds how many appends one pipeline carries: a pipeline's
// replies are read only once all of it is written, so a long one holds
// its first appends back, and Redis runs it without serving others.
const maxGroup = 256

// send runs the appends' script calls and sets each one's reply. One
// alone is sent as Append always sent it. Several go in one pipeline,
// each by EVALSHA; those Redis refused for not having the script (after a
// SCRIPT FLUSH or a restart: it ran nothing for them, so sending them
// again cannot store a message twice) are sent again by EVAL, which loads
// it, in a second pipeline. A failure other than a Redis error reply (the
// connection's, a timeout) fails every append of the pipeline: those
// whose replies came before it are stored, but their callers are told
// what a lone append's caller is told when its round trip fails.
//
// The pipeline does not end with the leader's ctx: it carries others'
// appends too. The client's read and write timeouts bound it.
func (s *Store) send(reqs []*appendReq) {
	if len(reqs) == 1 {
		r := reqs[0]
		r.firsts, r.err = appendScript.Run(r.ctx, s.appendRdb, r.keys, r.args...).Int64Slice()
		return
	}
	ctx := context.WithoutCancel(reqs[0].ctx)
	cmds := make([]*goredis.Cmd, len(reqs))
	pipe := s.appendRdb.Pipeline()
	for i, r := range reqs {
		cmds[i] = appendScript.EvalSha(ctx, pipe, r.keys, r.args...)
	}
	_, _ = pipe.Exec(ctx) // each command's error is read below
	if connErr(cmds) == nil {
		var again []int
		for i, c := range cmds {
			if goredis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				again = append(again, i)
			}
		}
		if len(again) > 0 {
			pipe := s.appendRdb.Pipeline()
			for _, i := range again {
				cmds[i] = appendScript.Eval(ctx, pipe, reqs[i].keys, reqs[i].args...)
			}
			_, _ = pipe.Exec(ctx)
		}
	}
	if err := connErr(cmds); err != nil {
		for _, r := range reqs {
			r.firsts, r.err = nil, err
		}
		return
	}
	for i, r := range reqs {
		r.firsts, r.err = cmds[i].Int64Slice()
	}
}

// connErr returns the first error of the commands that is not an error
// reply of Redis's: the connection's failure, a timeout, a closed client.
func connErr(cmds []*goredis.Cmd) error {
	for _, c := range cmds {
		if err := c.Err(); err != nil && !isRedisError(err) {
			return err
		}
	}
	return nil
}

// isRedisError reports whether err is an error reply of Redis's.
func isRedisError(err error) bool {
	var rerr goredis.Error
	return errors.As(err, &rerr)
}

var releaseScript = goredis.NewScript(fenceLua + `
redis.call('SREM', KEYS[2], ARGV[2])
return 0`)

func (s *Store) Release(ctx context.Context, tenant, clientID string, epoch uint64, packetID uint16) error {
	keys := []string{s.sessionKey(tenant, clientID, "e"), s.sessionKey(tenant, clientID, "r")}
	return fenced(releaseScript.Run(ctx, s.rdb, keys, epochArg(epoch), strconv.Itoa(int(packetID))).Err())
}

// markScript sets a mark only while its message is queued.
var markScript = goredis.NewScript(fenceLua + `
if redis.call('ZCOUNT', KEYS[2], ARGV[2], ARGV[2]) > 0 then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
end
return 0`)

func (s *Store) Mark(ctx context.Context, tenant, clientID string, epoch, seq uint64, packetID uint16, released bool) error {
	v := strconv.Itoa(int(packetID)) + ":0"
	if released {
		v = strconv.Itoa(int(packetID)) + ":1"
	}
	keys := []string{s.sessionKey(tenant, clientID, "e"), s.sessionKey(tenant, clientID, "q"), s.sessionKey(tenant, clientID, "d")}
	return fenced(markScript.Run(ctx, s.rdb, keys, epochArg(epoch), strconv.FormatUint(seq, 10), v).Err())
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

// ackScript deletes the named messages and their marks, each by its own
// number.
var ackScript = goredis.NewScript(fenceLua + `
for i = 2, #ARGV do
  redis.call('ZREMRANGEBYSCORE', KEYS[2], ARGV[i], ARGV[i])
end
if redis.call('HLEN', KEYS[3]) > 0 then
  redis.call('HDEL', KEYS[3], unpack(ARGV, 2))
end
return 0`)

func (s *Store) Ack(ctx context.Context, tenant, clientID string, epoch uint64, seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	keys := []string{s.sessionKey(tenant, clientID, "e"), s.sessionKey(tenant, clientID, "q"), s.sessionKey(tenant, clientID, "d")}
	// Lua unpacks at most about 8,000 values at once: a long list (a
	// restore dropping expired messages) goes in parts, each fenced.
	for part := range slices.Chunk(seqs, 1000) {
		args := make([]any, 0, 1+len(part))
		args = append(args, epochArg(epoch))
		for _, seq := range part {
			args = append(args, strconv.FormatUint(seq, 10))
		}
		if err := fenced(ackScript.Run(ctx, s.rdb, keys, args...).Err()); err != nil {
			return err
		}
	}
	return nil
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

// Close closes the connection pool. A send in progress fails, its
// connection closed under it, and with it the appends it carries; the
// appends queued behind it are then sent by the next leader, and fail as
// any command fails after Close. No append waits for ever.
func (s *Store) Close() error {
	var errs []error
	for _, c := range []*goredis.Client{s.rdb, s.appendRdb} {
		if err := c.Close(); err != nil && !errors.Is(err, goredis.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
