package tenants

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestShadowDeltaNumbers: numbers compare by value (1 = 1.0), and a
// document full of huge literals costs no more to compare than any other:
// a big-number comparison made a free plan's 8 KiB of 1e999999 pairs take
// seconds on every read.
func TestShadowDeltaNumbers(t *testing.T) {
	num := func(s string) json.Number { return json.Number(s) }
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"1", "1.0", true}, {"1", "1e0", true}, {"0.1", "0.10", true}, {"1", "2", false},
		{"1e999999", "1e999999", true}, {"-1e999999", "1e999999", false},
	} {
		if got := jsonEqual(num(c.a), num(c.b)); got != c.want {
			t.Errorf("jsonEqual(%s, %s) = %v; want %v", c.a, c.b, got, c.want)
		}
	}
	desired, reported := map[string]any{}, map[string]any{}
	for i := range 262 {
		desired[fmt.Sprint("k", i)] = num("1e999999")
		reported[fmt.Sprint("k", i)] = num("2e" + strings.Repeat("9", 6))
	}
	desired["on"], reported["on"] = num("1"), num("1.0")
	desired["temp"], reported["temp"] = num("21.5"), num("20")
	d := shadowDelta(desired, reported)
	if _, ok := d["on"]; ok {
		t.Error("1 and 1.0 differ in the delta")
	}
	if d["temp"] != num("21.5") {
		t.Errorf("delta temp = %v; want 21.5", d["temp"])
	}
}
