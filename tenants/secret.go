package tenants

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"sync"
	"time"
)

// crockford is the lower-case Crockford base32 alphabet: no padding, no
// letters that read like digits, and its order is the byte order, so ids that
// start with a timestamp sort by creation time.
var crockford = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// newID returns prefix followed by 26 characters: a 48-bit millisecond
// timestamp and 80 random bits. Within one process ids are strictly
// increasing, even within a millisecond (the random part is incremented, as
// in monotonic ULIDs), so ids of one kind sort in creation order and cursor
// pagination needs no separate sequence.
func newID(prefix string) string {
	idMu.Lock()
	ms := uint64(time.Now().UnixMilli())
	if ms <= idLastMS {
		ms = idLastMS
		incr(idLastRand[:])
	} else {
		idLastMS = ms
		rand.Read(idLastRand[:]) // crypto/rand.Read never fails (Go 1.24+).
	}
	var b [16]byte
	binary.BigEndian.PutUint16(b[0:2], uint16(ms>>32))
	binary.BigEndian.PutUint32(b[2:6], uint32(ms))
	copy(b[6:], idLastRand[:])
	idMu.Unlock()
	return prefix + crockford.EncodeToString(b[:])
}

var (
	idMu       sync.Mutex
	idLastMS   uint64
	idLastRand [10]byte
)

// incr adds one to a big-endian number. Overflowing 80 bits within one
// millisecond is not a case that happens.
func incr(b []byte) {
	for i := len(b) - 1; i >= 0; i-- {
		b[i]++
		if b[i] != 0 {
			return
		}
	}
}

// newSecret returns a random token of n bytes (8n bits), URL-safe.
func newSecret(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// hashSecret hashes a generated secret. Generated secrets carry at least 128
// random bits, so a fast hash is as good as a slow one and keeps device logins
// cheap; human passwords use Argon2id instead (see password.go).
func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// secretMatches compares a presented secret with a stored hash in constant
// time. Every device connect asks it, so it allocates nothing.
func secretMatches(secret, hash string) bool {
	sum := sha256.Sum256([]byte(secret))
	var got, want [2 * sha256.Size]byte
	hex.Encode(got[:], sum[:])
	if len(hash) != len(want) {
		return false
	}
	for i := range len(want) {
		c := hash[i]
		if 'A' <= c && c <= 'F' {
			c += 'a' - 'A'
		}
		want[i] = c
	}
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// CheckSecret reports whether secret matches hash, in constant time. The data
// plane uses it to verify a device's MQTT password.
func CheckSecret(secret, hash string) bool { return secretMatches(secret, hash) }
