//go:build unix

package broker

import "syscall"

// openFileLimit is the process's open-file limit (its soft RLIMIT_NOFILE,
// which the Go runtime raises to the hard one at start); 0 if unknown.
func openFileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<40 { // unlimited
		return 0
	}
	return uint64(rl.Cur)
}
