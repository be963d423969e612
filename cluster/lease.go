package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/roosthub/roost/internal/redisretry"
)

// Leases are the nodes' leases on their tenants, kept apart from the
// directory: a node serves its tenants only while its lease is current,
// and another node may take a tenant over only once the home's lease is
// gone. A node measures its own lease on its own monotonic clock from the
// moment it asked for it, so it knows its lease may have lapsed before any
// other node can know it did: a node paused past its lease (SIGSTOP, a
// long GC, a VM migration) acknowledges nothing when it wakes, before it
// even learns whether it lost its tenants. With the leases in Redis, the
// directory (Postgres) may be away without the nodes stopping.
type Leases interface {
	// Renew takes or extends this node's lease for the lease time.
	Renew(ctx context.Context, node string) error
	// Held reports whether a node's lease is current.
	Held(ctx context.Context, node string) (bool, error)
	// Drop ends this node's lease (it retires).
	Drop(ctx context.Context, node string) error
	// Time is how long a lease lasts after it was renewed.
	Time() time.Duration
}

// RedisLeases keeps the leases in Redis, each a key that expires: the
// key's expiry is Redis's own clock, so no two nodes' clocks are compared.
//
//	<prefix>:node:<id>   "1", expiring after the lease time
type RedisLeases struct {
	rdb    *goredis.Client
	prefix string
	ttl    time.Duration
}

// NewRedisLeases connects to Redis at url; a lease lasts ttl (4s if zero).
func NewRedisLeases(ctx context.Context, url, prefix string, ttl time.Duration) (*RedisLeases, error) {
	if prefix == "" {
		prefix = "roost"
	}
	if ttl <= 0 {
		ttl = 4 * time.Second
	}
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("leases: redis URL: %w", err)
	}
	redisretry.CheckClosedTLS(opts)
	rdb := goredis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("leases: redis: %w", err)
	}
	return &RedisLeases{rdb: rdb, prefix: prefix, ttl: ttl}, nil
}

func (l *RedisLeases) key(node string) string { return l.prefix + ":node:" + node }

// Renew sets the node's key to expire after the lease time.
func (l *RedisLeases) Renew(ctx context.Context, node string) error {
	return l.rdb.Set(ctx, l.key(node), "1", l.ttl).Err()
}

// Held reports whether the node's key has not expired.
func (l *RedisLeases) Held(ctx context.Context, node string) (bool, error) {
	n, err := l.rdb.Exists(ctx, l.key(node)).Result()
	return n == 1, err
}

// Drop deletes the node's key.
func (l *RedisLeases) Drop(ctx context.Context, node string) error {
	err := l.rdb.Del(ctx, l.key(node)).Err()
	if errors.Is(err, goredis.Nil) {
		err = nil
	}
	return err
}

// Time is the lease time.
func (l *RedisLeases) Time() time.Duration { return l.ttl }

// Close closes the connection.
func (l *RedisLeases) Close() error { return l.rdb.Close() }
