package broker

// MaxDurableWrites is how many outbox writes one connection may have
// queued or in flight before its reader waits.
const MaxDurableWrites = maxDurable

// Committers is the number of connections' outbox committers running in
// the process.
func Committers() int64 { return committers.Load() }

// SetDurableBehind turns the queued outbox writes of QoS 1 publishes on or
// off (off: the reader waits for each); it returns the setting it
// replaced.
func SetDurableBehind(on bool) bool { return durableBehind.Swap(on) }
