package web

import "testing"

func TestSeconds(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 seconds"}, {1, "1 second"}, {90, "90 seconds"}, {60, "1 minute"}, {300, "5 minutes"},
		{3600, "1 hour"}, {7200, "2 hours"}, {86400, "1 day"}, {7 * 86400, "7 days"}, {1000 * 86400, "1,000 days"},
	} {
		if got := seconds(tc.in); got != tc.want {
			t.Errorf("seconds(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
