// Package api owns Roost's REST control plane: the routes of openapi.yaml,
// resolving bearer tokens into callers (sessions, API keys, the operator),
// problem responses (error kinds mapped by internal/problem) and request
// hygiene (body limits, strict UTF-8 JSON). Sign-up, sign-in, sessions and
// their throttles are the auth front's, shared with the console. It calls
// the directory through the small interfaces its handlers declare.
package api
