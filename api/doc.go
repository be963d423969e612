// Package api owns Roost's REST control plane: the routes of openapi.yaml,
// authentication of consoles, API keys and the operator, the mapping of the
// directory's errors to problem responses, and request hygiene (body limits,
// strict JSON, login throttling). It calls the directory through the small
// interfaces its handlers declare.
package api
