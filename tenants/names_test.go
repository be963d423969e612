package tenants

import (
	"regexp"
	"strings"
	"testing"
)

// The regular expressions ValidDeviceName and ValidSlug were, and must
// still answer as.
var (
	deviceNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	slugRE       = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$`)
)

// nameAlphabet has a byte of each class the two checks tell apart (lower,
// upper, digit, each punctuation allowed in either, some refused, a byte
// of a multi-byte UTF-8 sequence, a NUL and a newline, which a `$`
// without (?m) must not match before).
const nameAlphabet = "aZ0._-/ +#$\n\x00\xc3\xa9"

// TestNameChecksMatchRegexps compares ValidDeviceName and ValidSlug with
// the regular expressions they replace on every string of up to 4 bytes of
// nameAlphabet, and on strings around their length limits.
func TestNameChecksMatchRegexps(t *testing.T) {
	check := func(s string) {
		t.Helper()
		if got, want := ValidDeviceName(s), deviceNameRE.MatchString(s); got != want {
			t.Errorf("ValidDeviceName(%q) = %v, want %v", s, got, want)
		}
		if got, want := ValidSlug(s), slugRE.MatchString(s); got != want {
			t.Errorf("ValidSlug(%q) = %v, want %v", s, got, want)
		}
	}
	var all func(prefix string, n int)
	all = func(prefix string, n int) {
		check(prefix)
		if n == 0 {
			return
		}
		for i := 0; i < len(nameAlphabet); i++ {
			all(prefix+nameAlphabet[i:i+1], n-1)
		}
	}
	all("", 4)

	for _, n := range []int{2, 3, 31, 32, 33, 127, 128, 129, 200} {
		for _, first := range []string{"a", "Z", "0", "-", "."} {
			for _, last := range []string{"a", "Z", "9", "-", "_", "."} {
				for _, mid := range []string{"a", "B", "-", "."} {
					check(first + strings.Repeat(mid, n-2) + last)
				}
			}
		}
	}
}

// FuzzNameChecks compares ValidDeviceName and ValidSlug with the regular
// expressions they replace.
func FuzzNameChecks(f *testing.F) {
	for _, s := range []string{"", "a", "abc", "a-b", "sensor.kitchen_1-a", "-ab", "ab-", "Abc", "é", "a\n", strings.Repeat("a", 128), strings.Repeat("a", 32)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidDeviceName(s), deviceNameRE.MatchString(s); got != want {
			t.Errorf("ValidDeviceName(%q) = %v, want %v", s, got, want)
		}
		if got, want := ValidSlug(s), slugRE.MatchString(s); got != want {
			t.Errorf("ValidSlug(%q) = %v, want %v", s, got, want)
		}
	})
}
