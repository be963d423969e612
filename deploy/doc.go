// Package deploy holds Roost's deployment files — the container image
// (Dockerfile), a local staging stack (compose.yaml), a Helm chart
// (helm/roost), a systemd unit and an example configuration — and the tests
// that keep them working: the chart renders and its manifests parse, and the
// Dockerfile's build step makes the same static binary `make build` makes.
// docs/operations.md says how to use them.
package deploy
