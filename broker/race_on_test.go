//go:build race

package broker_test

// raceDetector is whether the tests run under the race detector, which
// makes every frame larger and the stack's guard twice as large.
const raceDetector = true
