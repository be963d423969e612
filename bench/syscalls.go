package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// WriteSyscalls is the number of write system calls a process has made
// (write, writev, pwrite: the kernel's syscw), from /proc. A socket written
// with send or sendmsg is not counted; Go's net package and mosquitto
// write with write and writev.
func WriteSyscalls(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscw:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no syscw for process %d", pid)
}
