package broker

import (
	"testing"

	"github.com/roosthub/roost/dataplane"
)

// TestRecentAttemptsRing: the ring keeps the last RecentAttempts, newest
// first, before and after it wraps.
func TestRecentAttemptsRing(t *testing.T) {
	var q destQueue
	if got := q.recentAttempts(); len(got) != 0 {
		t.Fatalf("no attempts: %v", got)
	}
	for i := 1; i <= 3*dataplane.RecentAttempts+3; i++ {
		q.noteAttempt(dataplane.DeliveryAttempt{Attempt: i})
		got := q.recentAttempts()
		if len(got) != min(i, dataplane.RecentAttempts) {
			t.Fatalf("after %d: %d attempts", i, len(got))
		}
		for j, a := range got {
			if a.Attempt != i-j {
				t.Fatalf("after %d: attempt %d is %d, want %d", i, j, a.Attempt, i-j)
			}
		}
	}
}
