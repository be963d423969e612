package broker

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// readBufSize is the size of a connection's read buffer while it holds
// input: what one read takes from the socket.
const readBufSize = 4096

// readBufs are the read buffers of the connections that have input waiting
// to be framed: a connection takes one when a read finds bytes, and gives it
// back as soon as they are consumed. An idle connection holds none.
var readBufs = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// connectReaders are the readers the ingress reads CONNECTs with. A
// connection handed to its tenant's broker gives its reader back (see
// newInbuf) once it has taken what the reader read ahead.
var connectReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}

// newConnectReader is a reader for the CONNECT of conn, from the pool.
func newConnectReader(conn net.Conn) *bufio.Reader {
	r := connectReaders.Get().(*bufio.Reader)
	r.Reset(conn)
	return r
}

// inbuf is a connection's read side: a buffer held only while input waits
// in it.
//
// On a plain TCP socket the wait for input holds no buffer at all: a read
// is tried without blocking into a buffer from the pool, and when the
// socket has nothing the buffer goes back to the pool before the wait
// (see fillRaw). On any other connection (TLS, WebSocket, a PROXY header
// reader) the read that waits holds a pooled buffer, as a bufio.Reader
// would; those connections hold buffers of their own below anyway.
//
// An inbuf is not copied once it has read: its raw read function (see
// fillRaw) is bound to it.
type inbuf struct {
	src  io.Reader
	raw  syscall.RawConn // src's socket when src is a plain TCP socket
	buf  *[]byte         // nil while empty
	r, w int
	err  error // the error that came with the last bytes read, for the next read

	// readRaw is b.readSocket, made on the first raw read, and rawp,
	// rawn, rawerr and rawTaken are what it reads into and what it read:
	// a raw read passes a function to the socket, and one that kept its
	// state in its own variables would allocate them at every read.
	readRaw  func(fd uintptr) bool
	rawp     []byte
	rawn     int
	rawerr   error
	rawTaken *[]byte
}

// newInbuf reads conn, after what ahead (the ingress's CONNECT reader)
// read ahead of it; ahead may be nil. ahead goes back to the pool. Without
// a conn (tests of the framing alone), it reads ahead.
func newInbuf(conn net.Conn, ahead *bufio.Reader) inbuf {
	if conn == nil {
		return inbuf{src: ahead}
	}
	in := inbuf{src: conn}
	in.raw = rawSocket(conn)
	if ahead != nil {
		if n := ahead.Buffered(); n > 0 {
			if n <= readBufSize {
				in.buf = readBufs.Get().(*[]byte)
			} else {
				b := make([]byte, n)
				in.buf = &b
			}
			b, _ := ahead.Peek(n)
			in.w = copy(*in.buf, b)
		}
		if ahead.Size() == readBufSize {
			ahead.Reset(nil)
			connectReaders.Put(ahead)
		}
	}
	return in
}

// ReadByte returns the next byte, waiting for input.
func (b *inbuf) ReadByte() (byte, error) {
	if b.r == b.w {
		if err := b.fill(); err != nil {
			return 0, err
		}
	}
	c := (*b.buf)[b.r]
	b.r++
	b.drained()
	return c, nil
}

// Read reads what is buffered, or waits for input. A read at least as
// large as a buffer goes straight into p.
func (b *inbuf) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if b.r == b.w {
		if len(p) >= readBufSize {
			return b.readInto(p)
		}
		if err := b.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, (*b.buf)[b.r:b.w])
	b.r += n
	b.drained()
	return n, nil
}

// drained gives the buffer back once everything in it was consumed.
func (b *inbuf) drained() {
	if b.r == b.w && b.buf != nil {
		if len(*b.buf) == readBufSize {
			readBufs.Put(b.buf)
		}
		b.buf, b.r, b.w = nil, 0, 0
	}
}

// readInto reads from the connection straight into p.
func (b *inbuf) readInto(p []byte) (int, error) {
	if b.err != nil {
		err := b.err
		b.err = nil
		return 0, err
	}
	if b.raw != nil {
		return b.fillRaw(p)
	}
	return b.src.Read(p)
}

// fill waits for input and reads it into a buffer from the pool.
func (b *inbuf) fill() error {
	if b.err != nil {
		err := b.err
		b.err = nil
		return err
	}
	if b.raw != nil {
		n, err := b.fillRaw(nil)
		if n == 0 {
			return err
		}
		b.err = err
		return nil
	}
	buf := readBufs.Get().(*[]byte)
	for range 100 {
		n, err := b.src.Read(*buf)
		if n > 0 {
			b.buf, b.r, b.w, b.err = buf, 0, n, err
			return nil
		}
		if err != nil {
			readBufs.Put(buf)
			return err
		}
	}
	readBufs.Put(buf)
	return io.ErrNoProgress
}

// readError makes an error of a raw read look like one of net.Conn's Read:
// an *net.OpError "read" with the errno as an *os.SyscallError.
func (b *inbuf) readError(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		e := *op
		e.Op = "read"
		return &e
	}
	c := b.src.(net.Conn)
	var errno syscall.Errno
	if errors.As(err, &errno) {
		err = os.NewSyscallError("read", errno)
	}
	return &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
