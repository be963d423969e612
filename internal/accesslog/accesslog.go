// Package accesslog notes what a response was, for the one log line the
// API and the console write per request.
package accesslog

import (
	"net"
	"net/http"
)

// Recorder wraps a ResponseWriter and notes the status and the body's size.
// Unwrap lets http.ResponseController reach the connection beneath (to
// flush a stream or extend its deadlines).
type Recorder struct {
	http.ResponseWriter
	Status int
	Bytes  int
}

// WriteHeader notes the first status written.
func (r *Recorder) WriteHeader(status int) {
	if r.Status == 0 {
		r.Status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

// Write counts the bytes; a body without a header is a 200.
func (r *Recorder) Write(b []byte) (int, error) {
	if r.Status == 0 {
		r.Status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.Bytes += n
	return n, err
}

// Unwrap returns the wrapped ResponseWriter.
func (r *Recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// ClientIP is the address a request came from. Roost does not trust
// X-Forwarded-For: behind a proxy, the proxy must be the one to throttle.
func ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
