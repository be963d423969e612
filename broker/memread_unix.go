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
	if b.readRaw == nil {
		b.readRaw = b.readSocket
	}
	b.rawp = p
	err := b.raw.Read(b.readRaw)
	n, rerr, taken := b.rawn, b.rawerr, b.rawTaken
	b.rawp, b.rawn, b.rawerr, b.rawTaken = nil, 0, nil, nil
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

// readSocket is fillRaw's read of the socket fd, into b.rawp or a buffer
// from the pool (b.rawTaken), leaving what it read in b.rawn and b.rawerr.
// It reports false, holding no buffer, when the socket has nothing yet.
func (b *inbuf) readSocket(fd uintptr) bool {
	into := b.rawp
	if into == nil {
		b.rawTaken = readBufs.Get().(*[]byte)
		into = *b.rawTaken
	}
	for {
		b.rawn, b.rawerr = syscall.Read(int(fd), into)
		if b.rawerr != syscall.EINTR {
			break
		}
	}
	if b.rawerr == syscall.EAGAIN {
		if b.rawTaken != nil {
			readBufs.Put(b.rawTaken)
			b.rawTaken = nil
		}
		return false
	}
	return true
}
