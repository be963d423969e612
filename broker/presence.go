package broker

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/roosthub/roost/dataplane"
)

// presence is a tenant's live device connections, by device and by client
// id: what the API shows, what changes and drains act on, and what the
// meter counts as connected. Its zero value is empty; meter, if set, is
// told of each connection that comes and goes.
type presence struct {
	meter *meter

	mu       sync.Mutex
	byDevice map[string]map[*deviceConn]live
	// byClientID is the newest live connection of each client id.
	byClientID map[string]*mqtt.Client
}

// live is one live connection.
type live struct {
	client *mqtt.Client
	info   dataplane.Connection
}

// add registers a connection once mochi has its client; adding it again
// updates it.
func (p *presence) add(dc *deviceConn, cl *mqtt.Client, c dataplane.Connection) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byDevice == nil {
		p.byDevice, p.byClientID = map[string]map[*deviceConn]live{}, map[string]*mqtt.Client{}
	}
	m := p.byDevice[dc.id.device]
	if m == nil {
		m = map[*deviceConn]live{}
		p.byDevice[dc.id.device] = m
	}
	if _, again := m[dc]; !again && p.meter != nil {
		p.meter.connected()
	}
	m[dc] = live{client: cl, info: c}
	p.byClientID[c.ClientID] = cl
}

// drop forgets a connection; dropping it twice is harmless.
func (p *presence) drop(dc *deviceConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.byDevice[dc.id.device]
	if m == nil {
		return
	}
	if l, ok := m[dc]; ok {
		if p.meter != nil {
			p.meter.disconnected()
		}
		if p.byClientID[l.info.ClientID] == l.client {
			delete(p.byClientID, l.info.ClientID)
		}
	}
	delete(m, dc)
	if len(m) == 0 {
		delete(p.byDevice, dc.id.device)
	}
}

// takenOver reports whether another live connection has cl's client id:
// one that took its session over.
func (p *presence) takenOver(cl *mqtt.Client) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	other := p.byClientID[cl.ID]
	return other != nil && other != cl
}

// connections lists a device's live connections.
func (p *presence) connections(device string) []dataplane.Connection {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []dataplane.Connection
	for _, l := range p.byDevice[device] {
		out = append(out, l.info)
	}
	return out
}

// clients returns the clients of a device's live connections.
func (p *presence) clients(device string) []*mqtt.Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*mqtt.Client
	for _, l := range p.byDevice[device] {
		out = append(out, l.client)
	}
	return out
}

// clientOf returns a connection's client, once mochi has one.
func (p *presence) clientOf(dc *deviceConn) (*mqtt.Client, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.byDevice[dc.id.device][dc]
	return l.client, ok
}

// count is the number of live connections.
func (p *presence) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, m := range p.byDevice {
		n += len(m)
	}
	return n
}

// devices lists the devices with a live connection.
func (p *presence) devices() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.byDevice))
	for d := range p.byDevice {
		out = append(out, d)
	}
	return out
}

// conns returns the live connections that match, with their clients.
func (p *presence) conns(match func(*deviceConn) bool) map[*deviceConn]*mqtt.Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[*deviceConn]*mqtt.Client{}
	for _, m := range p.byDevice {
		for dc, l := range m {
			if match(dc) {
				out[dc] = l.client
			}
		}
	}
	return out
}
