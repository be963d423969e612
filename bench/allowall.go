package bench

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// AllowAll is the hook of a bare mochi-mqtt broker under test: every client
// may connect, publish and subscribe.
type AllowAll struct{ mqtt.HookBase }

func (*AllowAll) ID() string { return "allow-all" }
func (*AllowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (*AllowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (*AllowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }
