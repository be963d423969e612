package testenv

import (
	"net"
	"net/http"
	"time"
)

// ClientFrom returns an HTTP client whose connections come from a
// loopback address such as 127.0.0.2 (all of 127.0.0.0/8 is the loopback
// on Linux), so that a server on 127.0.0.1 sees several callers apart. It
// does not follow redirects.
func ClientFrom(addr string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(addr)}, Timeout: 10 * time.Second}
	return &http.Client{
		Transport:     &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 64},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
