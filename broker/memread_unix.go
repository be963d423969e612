//go:build unix

package broker

import (
	"io"
	"net"
	"syscall"
)

// rawSocket is conn's socket, for reads that wait holding no buffer: only
// for a plain TCP connection, which buffers nothing above the socket.
func rawSocket(conn net.Conn) syscall.RawConn {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// fillRaw reads the socket into p, or, for a nil p, into a buffer from the
// pool that becomes the inbuf's. The buffer is taken only once the socket
// has input: while it has none, the wait holds nothing.
func (b *inbuf) fillRaw(p []byte) (int, error) {
	var (
		n     int
		rerr  error
		taken *[]byte
	)
	err := b.raw.Read(func(fd uintptr) bool {
		into := p
		if into == nil {
			taken = readBufs.Get().(*[]byte)
			into = *taken
		}
		for {
			n, rerr = syscall.Read(int(fd), into)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			if taken != nil {
				readBufs.Put(taken)
				taken = nil
			}
			return false
		}
		return true
	})
	if err == nil && rerr != nil {
		err = rerr
	}
	if err != nil || n <= 0 {
		if taken != nil {
			readBufs.Put(taken)
		}
		if err == nil {
			return 0, io.EOF
		}
		return 0, b.readError(err)
	}
	if taken != nil {
		b.buf, b.r, b.w = taken, 0, n
	}
	return n, nil
}
