package testenv

import (
	"syscall"
	"time"
)

// CPUTime is the CPU time the process has used, in user and system mode:
// benchmarks report it per op, as it varies less than the time they take
// on a machine shared with other work. (getrusage of the process itself
// cannot fail.)
func CPUTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
