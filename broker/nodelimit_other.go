//go:build !unix

package broker

// openFileLimit: unknown here.
func openFileLimit() uint64 { return 0 }
