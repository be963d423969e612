package broker

import "testing"

func TestOnlyPubacks(t *testing.T) {
	puback := []byte{0x40, 2, 0, 1}
	pubackV5 := []byte{0x40, 3, 0, 2, 0x80}
	pubrec := []byte{0x50, 2, 0, 1}
	publish := []byte{0x30, 3, 0, 1, 't'}
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"one PUBACK", puback, true},
		{"PUBACKs", append(append([]byte{}, puback...), pubackV5...), true},
		{"PUBACK then PUBLISH", append(append([]byte{}, puback...), publish...), false},
		{"PUBLISH then PUBACK", append(append([]byte{}, publish...), puback...), false},
		{"PUBREC", pubrec, false},
		{"empty", nil, false},
		{"truncated length", []byte{0x40}, false},
	} {
		if got := onlyPubacks(tc.b); got != tc.want {
			t.Errorf("%s: onlyPubacks(% x) = %t, want %t", tc.name, tc.b, got, tc.want)
		}
	}
}

func TestHasDisconnect(t *testing.T) {
	puback := []byte{0x40, 2, 0, 1}
	disconnect := []byte{0xE0, 1, 0x80}
	long := append([]byte{0x30, 0x80, 0x01}, make([]byte, 128)...) // a PUBLISH with a two-byte length
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"DISCONNECT", disconnect, true},
		{"PUBACK then DISCONNECT", append(append([]byte{}, puback...), disconnect...), true},
		{"long PUBLISH then DISCONNECT", append(append([]byte{}, long...), disconnect...), true},
		{"PUBACK", puback, false},
		{"truncated length", []byte{0x30, 0x80}, false},
		{"empty", nil, false},
	} {
		if got := hasDisconnect(tc.b); got != tc.want {
			t.Errorf("%s: hasDisconnect(% x) = %t, want %t", tc.name, tc.b, got, tc.want)
		}
	}
}
