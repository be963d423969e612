package broker

import (
	"testing"
	"time"
)

// TestDropNoteFolds: the first drops raise their event at once; those in
// the next minute are held and raised together by the first drop after
// it.
func TestDropNoteFolds(t *testing.T) {
	var n dropNote
	at := time.Unix(1_700_000_000, 0)
	for _, step := range []struct {
		after time.Duration
		drops int64
		want  int64 // raised now; 0: held
	}{
		{0, 3, 3},
		{time.Second, 2, 0},
		{30 * time.Second, 4, 0},
		{dropEvery - 32*time.Second, 1, 0}, // 59 s after the first event
		{time.Second, 1, 8},                // a minute after it
		{time.Second, 1, 0},
		{dropEvery, 2, 3}, // a minute after the second
	} {
		at = at.Add(step.after)
		count, raise := n.add(step.drops, at)
		if raise != (step.want > 0) || count != step.want {
			t.Fatalf("after %v, %d drops: raise %v with %d, want %d", step.after, step.drops, raise, count, step.want)
		}
	}
}
