package web

import "testing"

func TestCSVSafe(t *testing.T) {
	for in, want := range map[string]string{
		"device.create":     "device.create",
		"=HYPERLINK(\"x\")": "'=HYPERLINK(\"x\")",
		"+1":                "'+1",
		"-cmd":              "'-cmd",
		"@SUM(A1)":          "'@SUM(A1)",
		"":                  "",
		"account:acc_123":   "account:acc_123",
	} {
		if got := csvSafe(in); got != want {
			t.Errorf("csvSafe(%q) = %q, want %q", in, got, want)
		}
	}
}
