//go:build !unix

package broker

import (
	"net"
	"syscall"
)

// rawSocket is nil: reads without a buffer while waiting need a unix
// socket.
func rawSocket(net.Conn) syscall.RawConn { return nil }

func (b *inbuf) fillRaw([]byte) (int, error) { panic("unreachable") }
