package tenants

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
)

// Argon2id parameters for human passwords: OWASP's minimum (19 MiB, two
// passes, one lane). They are stored in every hash, so raising them later
// keeps old hashes valid.
const (
	argonMemory  = 19 * 1024 // KiB
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
)

// Password length limits. The upper limit keeps a login from becoming a way to
// make the server hash megabytes.
const (
	minPasswordLen = 10
	maxPasswordLen = 256
)

// argonCost is the memory (KiB) and passes new hashes are made with.
type argonCost struct{ memory, time uint32 }

// testCost, when set, is the cost new hashes are made with instead of
// argonMemory and argonTime (UseCheapPasswordHashes).
var testCost atomic.Pointer[argonCost]

// UseCheapPasswordHashes makes new password hashes at Argon2id's least
// cost (8 KiB, one pass) in this process, a test binary: under the race
// detector a hash at the real cost takes about a third of a second, and the
// api, web and tenants tests sign up and log in thousands of times. Hashes
// record their parameters, so they are checked at the cost they were made
// with. It panics outside a test binary. The tests of the cost itself set
// it back (UseRealPasswordHashes).
func UseCheapPasswordHashes() {
	if !testing.Testing() {
		panic("tenants: cheap password hashes outside a test")
	}
	testCost.Store(&argonCost{memory: 8, time: 1})
	dummyPasswordHash.Store(ptr(hashPassword(newSecret(24))))
}

// UseRealPasswordHashes undoes UseCheapPasswordHashes.
func UseRealPasswordHashes() {
	testCost.Store(nil)
	dummyPasswordHash.Store(ptr(hashPassword(newSecret(24))))
}

func ptr[T any](v T) *T { return &v }

// hashPassword returns the PHC string form of password's Argon2id hash.
func hashPassword(password string) string {
	c := argonCost{memory: argonMemory, time: argonTime}
	if tc := testCost.Load(); tc != nil {
		c = *tc
	}
	salt := make([]byte, argonSaltLen)
	rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, c.time, c.memory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, c.memory, c.time, argonThreads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

// checkPassword reports whether password matches a PHC Argon2id hash.
func checkPassword(password, encoded string) bool {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false
	}
	var memory, passes uint32
	var threads uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &memory, &passes, &threads); err != nil {
		return false
	}
	salt, err := base64.RawStdEncoding.DecodeString(parts[4])
	if err != nil {
		return false
	}
	want, err := base64.RawStdEncoding.DecodeString(parts[5])
	if err != nil || len(want) == 0 {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, passes, memory, threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// dummyPasswordHash is checked against when a login names an unknown email,
// so that it takes as long as a wrong password for a known one.
var dummyPasswordHash atomic.Pointer[string]

func init() { dummyPasswordHash.Store(ptr(hashPassword(newSecret(24)))) }

// hashSlots bounds the Argon2id hashes a process computes at once. Each
// holds 19 MiB while it runs, so without a bound a burst of sign-ups or
// logins (24 parallel loops took a process from 96 MB to 747 MB) decides
// how much memory the process takes. Every hash and every check of a
// password goes through the store's one hashSlots, whether it came from the
// API or the console.
type hashSlots struct {
	ch chan struct{}
	// maxWait bounds the wait for a slot; past it the request is answered
	// "busy, try again" rather than queued without end.
	maxWait time.Duration
	// running, peak and done count the hashes at work, the most at once,
	// and all so far: what the bound is seen by.
	running, peak, done atomic.Int64
}

func newHashSlots(n int) *hashSlots {
	return &hashSlots{ch: make(chan struct{}, max(n, 1)), maxWait: 10 * time.Second}
}

// do runs fn holding a slot.
func (h *hashSlots) do(ctx context.Context, fn func()) error {
	t := time.NewTimer(h.maxWait)
	defer t.Stop()
	select {
	case h.ch <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return &RetryError{Kind: ErrUnavailable, After: time.Second, Msg: "the server is busy checking passwords; try again in a moment"}
	}
	defer func() { <-h.ch }()
	n := h.running.Add(1)
	for p := h.peak.Load(); n > p && !h.peak.CompareAndSwap(p, n); p = h.peak.Load() {
	}
	fn()
	h.running.Add(-1)
	h.done.Add(1)
	return nil
}

// hashMemory is what one concurrent password hash is budgeted: the 19 MiB
// Argon2id holds, and room for the garbage collector to run behind it.
const hashMemory = 64 << 20

// DefaultPasswordHashes is how many password hashes a process computes at
// once unless told otherwise: two per CPU, no more than the memory
// available allows at 64 MiB each, and at least two.
func DefaultPasswordHashes() int {
	n := 2 * runtime.GOMAXPROCS(0)
	if mem := availableMemory(); mem > 0 {
		n = min(n, int(mem/hashMemory))
	}
	return max(2, n)
}

// availableMemory is the memory the process may still take: what its
// cgroup (v2) allows beyond what it uses, or else the system's
// MemAvailable; 0 if neither can be read.
func availableMemory() int64 {
	if limit, err := readInt("/sys/fs/cgroup/memory.max"); err == nil && limit > 0 {
		used, _ := readInt("/sys/fs/cgroup/memory.current")
		return max(limit-used, 0)
	}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// PasswordHashStats reports how many password hashes (and checks) the
// store has computed, and the most it computed at once.
func (s *Store) PasswordHashStats() (done, peak int64) {
	return s.hashes.done.Load(), s.hashes.peak.Load()
}

// SetPasswordHashes bounds how many password hashes the store computes at
// once (DefaultPasswordHashes unless set); call it before serving.
func (s *Store) SetPasswordHashes(n int) { s.hashes = newHashSlots(n) }

// hash returns password's Argon2id hash, computed in a slot.
func (s *Store) hash(ctx context.Context, password string) (string, error) {
	var h string
	err := s.hashes.do(ctx, func() { h = hashPassword(password) })
	return h, err
}

// check reports whether password matches encoded, computed in a slot.
func (s *Store) check(ctx context.Context, password, encoded string) (bool, error) {
	var ok bool
	err := s.hashes.do(ctx, func() { ok = checkPassword(password, encoded) })
	return ok, err
}
