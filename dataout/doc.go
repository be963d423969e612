// Package dataout owns getting a tenant's data out of the hub to the
// tenant's own systems: the signed webhook request and its sender (with the
// address guard that keeps webhooks off the hub's own network), the retry
// policy a delivery follows, the sealing of destination secrets at rest,
// and the CEL conditions rules filter messages with.
//
// The sender takes one batch and gives one attempt's outcome; the retry
// policy turns that outcome into delivered, retry at T, or dead. The
// durable outbox that feeds batches in (next slice of issue 21) owns the
// loop and the clock.
package dataout
