package transport

import (
	"errors"
	"net"
	"syscall"
)

// AcceptRetryable reports whether an Accept error is one to wait out, not
// a reason to stop serving: the process or the system out of descriptors
// (EMFILE, ENFILE) or of buffers, a connection reset or aborted before it
// was accepted, a timeout. A listener closed, or any other error, ends the
// accept loop.
func AcceptRetryable(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.ECONNRESET} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
