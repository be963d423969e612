package broker

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/roosthub/roost/internal/lru"
)

// authLimit slows down failed MQTT authentications, never a valid
// credential: every attempt is evaluated (secret, token, certificate) and
// a valid one is admitted whatever came before it, so that no stranger can
// lock a device out. Failures are counted in streaks per username and
// source address together, per source address, and per username from any
// address; past a streak's free failures each further failure is answered
// late, with 0x9F (3.1.1: 0x03) instead of 0x86 (0x04).
//
// Guessing is not what this stops: a device's secret has 192 random bits
// and tokens and certificates are signed. It bounds what failures cost and
// say: an address or a username with a streak is answered late, its
// socket counted all the while among the address's connections in
// handshake (see handshakes), and it no longer raises an event per try.
//
// A success ends the streak of its username and address together: that
// device there works now. It ends neither the address's streak nor the
// username's: those count other parties' failures, which one success
// says nothing about (and an address's could then be cleared by anyone
// with a device of their own to connect from it).
type authLimit struct {
	now  func() time.Time
	seed maphash.Seed

	mu      sync.Mutex
	streaks *lru.Cache[authKey, *authStreak]
}

// The free failures in a row of each streak, and the rest.
const (
	authFreePerPair     = 10  // one username from one address: a device with a stale secret, or a guesser
	authFreePerAddress  = 50  // one address, any usernames: a NAT of many devices, or one guesser trying many
	authFreePerUsername = 100 // one username, any address: guessers spread out
	// authForgiveAfter ends a streak without failures for so long.
	authForgiveAfter = time.Hour
	// authMaxDelay bounds the doubling delay (1s, 2s, 4s, ...); the
	// answer never waits past the connection's CONNECT timeout anyway.
	authMaxDelay = 15 * time.Minute
	// authStreaks bounds the streaks kept: the least recently failing
	// are forgotten first (a flood of made-up usernames forgets old
	// streaks, which only forgives them; the flooding address's own
	// streak stays, being the most recent).
	authStreaks = 100_000
)

type authKind byte

const (
	authPair authKind = iota
	authAddress
	authUsername
)

// authKey names a streak. Usernames (up to 64 KiB) are kept as a hash.
type authKey struct {
	kind     authKind
	username uint64
	source   string
}

type authStreak struct {
	n    int
	last time.Time
}

func newAuthLimit(now func() time.Time) *authLimit {
	return &authLimit{now: now, seed: maphash.MakeSeed(), streaks: lru.New[authKey, *authStreak](authStreaks)}
}

func (a *authLimit) keys(username, source string) [3]authKey {
	u := maphash.String(a.seed, username)
	return [3]authKey{{authPair, u, source}, {authAddress, 0, source}, {authUsername, u, ""}}
}

func freeFailures(k authKind) int {
	switch k {
	case authPair:
		return authFreePerPair
	case authAddress:
		return authFreePerAddress
	}
	return authFreePerUsername
}

// fail counts a failed attempt of username from source (see sourceOf) and
// returns how late it is to be answered: 0 while every streak it extends
// is within its free failures, else 1s doubling with each failure beyond,
// up to authMaxDelay. first is true when a streak just ran out of free
// failures: the one failure worth a log line.
func (a *authLimit) fail(username, source string) (delay time.Duration, first bool) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, k := range a.keys(username, source) {
		s, ok := a.streaks.Get(k)
		if !ok {
			s = &authStreak{}
			a.streaks.Add(k, s)
		}
		if now.Sub(s.last) >= authForgiveAfter {
			s.n = 0
		}
		if over := s.n - freeFailures(k.kind); over >= 0 {
			delay = max(delay, min(time.Second<<min(over, 20), authMaxDelay))
			first = first || over == 0
		}
		s.n++
		s.last = now
	}
	return delay, first
}

// succeeded ends the streak of username from source.
func (a *authLimit) succeeded(username, source string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.streaks.Remove(a.keys(username, source)[0])
}
