package broker

// serveAdmitted serves an admitted connection until it ends, on a goroutine
// of its own: the one that admitted it ends instead of serving it. mochi
// runs a connection's read loop on the goroutine that hands it the
// connection, for the connection's life, and a goroutine's stack only
// shrinks to twice what it uses: under the read loop, the admission's frames
// (ingress.handle alone is 3.7 KiB, with what its calls grew the stack to)
// would stay, doubled, for every idle connection.
func (in *ingress) serveAdmitted(inst *instance, dc *deviceConn) {
	defer in.wg.Done()
	func() {
		defer in.reg.releaseConn(inst)
		inst.serve(dc)
	}()
	// The connection no longer counts against the tenant's connections
	// while it lingers: the device may connect again at once.
	in.closeServed(dc)
}
