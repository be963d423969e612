package broker

import "syscall"

// errTooManyFiles is accept's error when the process is out of descriptors:
// a reason to wait, not to stop serving.
var errTooManyFiles = syscall.EMFILE
