package web

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
)

// recorder notes a response's status and size for the access log. Unwrap
// lets http.ResponseController reach the connection (the live view
// flushes and extends its deadlines).
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += n
	return n, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// accessLog writes one structured line per request: the route (not the
// path, so no slug or device name reaches the log unless it is the
// visitor's own business), status, size, duration and who asked. Never a
// form value or a cookie.
func (c *Console) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		who := &visitor{name: "anonymous"}
		next.ServeHTTP(rec, r.WithContext(withVisitor(r.Context(), who)))
		c.cfg.Log.Info("console request", "method", r.Method, "route", chi.RouteContext(r.Context()).RoutePattern(),
			"status", rec.status, "bytes", rec.bytes, "duration_ms", time.Since(start).Milliseconds(), "actor", who.name, "remote", r.RemoteAddr)
	})
}
