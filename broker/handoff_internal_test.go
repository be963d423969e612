package broker

import (
	"io"
	"net"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// TestHandoffCloseDisconnectsItsClientsItself: closing an instance's
// listener disconnects the clients the ingress handed it without mochi's
// closer, whose GetByListener takes the clients' read lock twice and
// deadlocks against a client leaving at the same moment (seen once in
// TestRetainedSurvivesRestart: Close stuck in RLock, attachClient's Delete
// in Lock).
func TestHandoffCloseDisconnectsItsClientsItself(t *testing.T) {
	srv := mqtt.New(nil)
	h := &handoff{srv: srv}
	var conns []net.Conn
	for _, listener := range []string{listenerID, listenerID, "other"} {
		server, client := net.Pipe()
		go io.Copy(io.Discard, client)
		conns = append(conns, client)
		cl := srv.NewClient(server, listener, "c"+string(rune('0'+len(conns))), false)
		srv.Clients.Add(cl)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	h.Close(func(string) { t.Error("mochi's closer was used") })
	for _, cl := range srv.Clients.GetAll() {
		if want := cl.Net.Listener == listenerID; cl.Closed() != want {
			t.Errorf("client %s on listener %s: closed %v, want %v", cl.ID, cl.Net.Listener, cl.Closed(), want)
		}
	}
}
