// Package roost holds what belongs to the whole product rather than to one
// part of it: the REST contract (openapi.yaml) and the version.
package roost

import _ "embed"

// OpenAPI is the REST contract, served at /openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Version is set at build time with -ldflags "-X github.com/roosthub/roost.Version=...".
var Version = "dev"
