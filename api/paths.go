package api

import "strings"

// Owns reports whether path is the API's: everything under /v1/ and the
// few top-level paths routes serves beside it. What shares the API's port
// (the console) takes every other path, so a new top-level route is added
// here too; TestOwnsEveryRoute fails until it is.
func Owns(path string) bool {
	switch path {
	case "/healthz", "/readyz", "/openapi.yaml", "/metrics":
		return true
	}
	return strings.HasPrefix(path, "/v1/")
}
