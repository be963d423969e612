package tenants

import (
	"context"
	"fmt"
	"time"
)

func fmtSscanf(hash string, m, t, p *int) (int, error) {
	var v int
	return fmt.Sscanf(hash, "$argon2id$v=%d$m=%d,t=%d,p=%d$", &v, m, t, p)
}

// UsageRecords counts the records of usage transactions kept.
func (s *Store) UsageRecords(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM usage_applied`).Scan(&n)
	return n, err
}

// RealPasswordHashes makes the test's password hashes at the real cost
// (TestMain makes them cheap), until it ends.
func RealPasswordHashes(t interface{ Cleanup(func()) }) {
	UseRealPasswordHashes()
	t.Cleanup(UseCheapPasswordHashes)
}

// WaitForHashSlots lets the store's password hashes wait for a slot as
// long as d, where a busy machine would otherwise see them refused.
func (s *Store) WaitForHashSlots(d time.Duration) { s.hashes.maxWait = d }
