package web

import "testing"

// TestSafeNext: only a plain local path survives as the place to go after
// logging in; every way of naming another site, or of smuggling in a
// character a browser drops or rewrites, falls back to "/".
func TestSafeNext(t *testing.T) {
	for _, tc := range []struct{ next, want string }{
		{"/tenants", "/tenants"},
		{"/tenants/acme/devices?x=1&y=%2F", "/tenants/acme/devices?x=1&y=%2F"},
		{"/tenants/acme/devices/sensor-1#top", "/tenants/acme/devices/sensor-1#top"},
		{"/", "/"},
		{"", "/"},
		{"tenants", "/"},
		{"//evil.example/", "/"},
		{"///evil.example/", "/"},
		{"/\\evil.example/", "/"},
		{"\\\\evil.example/", "/"},
		{"/\t/evil.example/", "/"},                       // next=/%09/evil.example/ once the query is decoded
		{"/%09/evil.example/", "/"},                      // sent twice encoded
		{"/%2509/evil.example/", "/"},                    // three times
		{"/\r\n/evil.example/", "/"},                     // CR LF
		{"/%0d%0a/evil.example/", "/"},                   // CR LF, encoded
		{"/\n/evil.example", "/"},                        // LF
		{"/\x00/evil.example", "/"},                      // NUL
		{"/\x7f/evil.example", "/"},                      // DEL
		{"/%2F/evil.example/", "/"},                      // a slash in disguise
		{"/%2f%2fevil.example/", "/"},                    // two
		{"/%5C/evil.example/", "/"},                      // a backslash in disguise
		{"/%5c%5cevil.example/", "/"},                    // two
		{"/ /evil.example/", "/"},                        // a space
		{"/\u00a0/evil.example/", "/"},                   // a no-break space
		{"/\u2028/evil.example/", "/"},                   // a line separator
		{"https://evil.example/", "/"},                   // absolute
		{"javascript:alert(1)", "/"},                     // a scheme
		{"/javascript:alert(1)", "/javascript:alert(1)"}, // a path, harmless
		{" /tenants", "/"},                               // leading space
		{"\t//evil.example", "/"},                        // leading tab
		{"/%zz", "/"},                                    // a broken escape
		{"/\xff", "/"},                                   // not UTF-8
		{"/%ff", "/"},                                    // not UTF-8, encoded
		{"/tenants/%E2%80%A8", "/"},                      // U+2028, encoded
		{"/tenants/caf%C3%A9", "/tenants/caf%C3%A9"},
	} {
		if got := safeNext(tc.next); got != tc.want {
			t.Errorf("safeNext(%q) = %q, want %q", tc.next, got, tc.want)
		}
	}
}
