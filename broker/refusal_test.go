package broker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/tenants"
)

// TestRefusals: every way a CONNECT can be wrong gets its code. Unknown
// tenant, unknown device, wrong secret and disabled device get the same one.
func TestRefusals(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.tenant("other")
	secret := s.device("acme", "d1")
	otherSecret := s.device("other", "d1")
	offSecret := s.device("acme", "off")
	off := false
	if _, err := s.store.UpdateDevice(ctx, "acme", "off", tenants.DeviceUpdate{Enabled: &off}); err != nil {
		t.Fatal(err)
	}
	s.tenant("frozen")
	frozenSecret := s.device("frozen", "d1")
	yes := true
	if _, err := s.store.AdminUpdateTenant(ctx, "frozen", tenants.AdminTenantUpdate{Suspended: &yes}); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name             string
		username, secret string
		clientID         string
		v5, v3           byte
	}{
		{"wrong secret", "acme/d1", "not-the-secret", "d1", 0x86, 0x04},
		{"other tenant's secret", "acme/d1", otherSecret, "d1", 0x86, 0x04},
		{"unknown tenant", "nope/d1", secret, "d1", 0x86, 0x04},
		{"unknown device", "acme/ghost", secret, "ghost", 0x86, 0x04},
		{"disabled device", "acme/off", offSecret, "off", 0x86, 0x04},
		{"no password", "acme/d1", "", "d1", 0x86, 0x04},
		{"suspended tenant", "frozen/d1", frozenSecret, "d1", 0x8A, 0x05},
		{"client id not bound", "acme/d1", secret, "someone-else", 0x85, 0x02},
	}
	for _, bad := range []string{"", "acme", "acme/", "/d1", "acme//d1", "acme/d1/x", "ACME/d1", "асme/d1", "acme/d1\x00",
		"acme\x00/d1", "acme/d 1", "acme/d1/", "acme/+", "acme/#", strings.Repeat("a", 65535)} {
		cases = append(cases, struct {
			name             string
			username, secret string
			clientID         string
			v5, v3           byte
		}{"username " + truncate(bad), bad, secret, "d1", 0x86, 0x04})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := refusedV5(t, s.addr, tc.username, tc.secret, tc.clientID); got != tc.v5 {
				t.Errorf("MQTT 5: got 0x%02x, want 0x%02x", got, tc.v5)
			}
			_, got, err := dialV3(t, s.addr, tc.username, tc.secret, tc.clientID, true)
			if err == nil || got != tc.v3 {
				t.Errorf("MQTT 3.1.1: got code 0x%02x (%v), want 0x%02x", got, err, tc.v3)
			}
		})
	}
	// The right credentials still work after all that.
	mustV5(t, s.addr, "acme/d1", secret, "d1")
	mustV3(t, s.addr, "acme/d1", secret, "d1", true)
}

func truncate(s string) string {
	if len(s) > 20 {
		return s[:20] + "…"
	}
	return s
}

// TestClientIDBinding: an exact device gets its name as client id; a
// gateway may pick its own, of at most MaxClientIDBytes, which lives only
// inside its tenant.
func TestClientIDBinding(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	secret := s.device("acme", "d1")
	c := mustV5(t, s.addr, "acme/d1", secret, "")
	if c.connack.Properties == nil || c.connack.Properties.AssignedClientID != "d1" {
		t.Errorf("v5 empty client id: assigned %+v, want d1", c.connack.Properties)
	}
	eventually(t, 2*time.Second, "presence of d1", func() bool {
		conns := s.hub.Connections("acme", "d1")
		return len(conns) == 1 && conns[0].ClientID == "d1"
	})
	c.Disconnect(&paho.Disconnect{})
	mustV3(t, s.addr, "acme/d1", secret, "", true)
	// 3.1.1 forbids an empty id with a persistent session.
	if _, code, err := dialV3(t, s.addr, "acme/d1", secret, "", false); err == nil || code != 0x02 {
		t.Errorf("3.1.1 empty id, clean session false: got 0x%02x (%v), want 0x02", code, err)
	}

	gwSecret := s.device("acme", "gateway", tenants.ClientIDsAny)
	g1 := mustV5(t, s.addr, "acme/gateway", gwSecret, "sensor-a")
	g2 := mustV3(t, s.addr, "acme/gateway", gwSecret, "sensor-b", true)
	g3 := mustV5(t, s.addr, "acme/gateway", gwSecret, "")
	if g3.connack.Properties == nil || g3.connack.Properties.AssignedClientID == "" {
		t.Error("a gateway with an empty id was not assigned one")
	}
	// An id of its own is at most MaxClientIDBytes.
	long := strings.Repeat("é", tenants.MaxClientIDBytes/2)
	g4 := mustV5(t, s.addr, "acme/gateway", gwSecret, long)
	eventually(t, 2*time.Second, "four gateway connections", func() bool { return len(s.hub.Connections("acme", "gateway")) == 4 })
	for _, tooLong := range []string{long + "x", strings.Repeat("x", 65535)} {
		if got := refusedV5(t, s.addr, "acme/gateway", gwSecret, tooLong); got != 0x85 {
			t.Errorf("MQTT 5, a client id of %d bytes: got 0x%02x, want 0x85", len(tooLong), got)
		}
		if _, got, err := dialV3(t, s.addr, "acme/gateway", gwSecret, tooLong, true); err == nil || got != 0x02 {
			t.Errorf("MQTT 3.1.1, a client id of %d bytes: got 0x%02x (%v), want 0x02", len(tooLong), got, err)
		}
	}
	_, _, _ = g1, g2, g4
}
