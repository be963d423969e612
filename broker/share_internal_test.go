package broker

import (
	"net"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// readsAll lets every client read every topic.
type readsAll struct{}

func (readsAll) mayRead(*mqtt.Client, string) bool { return true }

// TestChooserCleanFirst: where sessions live anywhere, a message from
// another node goes to a connected clean member of a group before a
// connected persistent one (whose turn the sender did not queue), and
// to the persistent one when it is the only one connected; a message
// published here goes to either.
func TestChooserCleanFirst(t *testing.T) {
	srv := mqtt.New(nil)
	member := func(id string, expiry uint32) {
		conn, peer := net.Pipe()
		t.Cleanup(func() { conn.Close(); peer.Close() })
		cl := srv.NewClient(conn, "t", id, false)
		cl.Properties.ProtocolVersion = 5
		cl.Properties.Props.SessionExpiryInterval = expiry
		srv.Clients.Add(cl)
	}
	member("clean", 0)
	member("kept", 3600)
	members := map[string]packets.Subscription{
		"clean": {Filter: "$share/g/jobs/#", Qos: 1},
		"kept":  {Filter: "$share/g/jobs/#", Qos: 1},
	}
	c := chooser{clients: srv.Clients, acl: readsAll{}, p: &persistence{anywhere: true}}
	local := packets.Packet{TopicName: "jobs/x", FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}}
	fromAfar := local
	fromAfar.Properties.User = []packets.UserProperty{{Key: remoteProperty, Val: "$share/g/jobs/#"}}

	chosen := map[string]int{}
	for range 200 {
		id, _ := c.choose(members, nil, fromAfar)
		chosen[id]++
	}
	if chosen["clean"] != 200 {
		t.Errorf("a message from another node went to %v, want the clean member each time", chosen)
	}
	clear(chosen)
	for range 200 {
		id, _ := c.choose(members, nil, local)
		chosen[id]++
	}
	if chosen["clean"] == 0 || chosen["kept"] == 0 {
		t.Errorf("a message published here went to %v, want both members in turn", chosen)
	}
	delete(members, "clean")
	if id, _ := c.choose(members, nil, fromAfar); id != "kept" {
		t.Errorf("with only a persistent member connected, a message from another node went to %q, want kept", id)
	}
}
