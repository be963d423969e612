package web

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/internal/accesslog"
)

// accessLog writes one structured line per request: the route (not the
// path, so no slug or device name reaches the log unless it is the
// visitor's own business), status, size, duration and who asked. Never a
// form value or a cookie.
func (c *Console) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &accesslog.Recorder{ResponseWriter: w}
		who := &visitor{name: "anonymous"}
		next.ServeHTTP(rec, r.WithContext(withVisitor(r.Context(), who)))
		c.cfg.Log.Info("console request", "method", r.Method, "route", chi.RouteContext(r.Context()).RoutePattern(),
			"status", rec.Status, "bytes", rec.Bytes, "duration_ms", time.Since(start).Milliseconds(), "actor", who.name, "remote", r.RemoteAddr)
	})
}
