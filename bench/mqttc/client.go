// Package mqttc is the load generator's MQTT client: a thin layer over
// mochi-mqtt's packet codec, with no session store, no reconnects and no
// queues of its own, so that what it measures is the broker.
package mqttc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Options describe a connection.
type Options struct {
	ClientID, Username, Password string
	// Version is 4 (3.1.1, the default) or 5.
	Version   byte
	KeepAlive uint16
	// KeepSession asks for a persistent session (clean session 0, MQTT
	// 3.1.1).
	KeepSession bool
}

// Client is one MQTT connection.
type Client struct {
	conn    net.Conn
	version byte

	wmu sync.Mutex
	w   *bufio.Writer

	nextID  atomic.Uint32
	mu      sync.Mutex
	waiting map[uint16]chan packets.Packet

	// OnMessage gets every PUBLISH received; set it before subscribing.
	// QoS 1 messages are acknowledged after it returns.
	OnMessage func(topic string, payload []byte)

	done chan struct{}
	err  error
}

// ErrRefused is a CONNACK with a failure code.
var ErrRefused = errors.New("connection refused")

// Dial connects and waits for the CONNACK.
func Dial(ctx context.Context, addr string, o Options) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if o.Version == 0 {
		o.Version = 4
	}
	c := &Client{conn: conn, version: o.Version, w: bufio.NewWriter(conn), waiting: map[uint16]chan packets.Packet{}, done: make(chan struct{})}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: o.Version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: !o.KeepSession, Keepalive: o.KeepAlive, ClientIdentifier: o.ClientID,
			UsernameFlag: o.Username != "", Username: []byte(o.Username), PasswordFlag: o.Password != "", Password: []byte(o.Password)},
	}
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	if err := c.write(pk); err != nil {
		conn.Close()
		return nil, err
	}
	r := bufio.NewReader(conn)
	ack, err := readPacket(r, o.Version)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read CONNACK: %w", err)
	}
	if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		conn.Close()
		return nil, fmt.Errorf("%w: %#x", ErrRefused, ack.ReasonCode)
	}
	conn.SetDeadline(time.Time{})
	go c.readLoop(r)
	return c, nil
}

// Done is closed when the connection ends; Err says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the connection ended, once Done is closed.
func (c *Client) Err() error { <-c.done; return c.err }

// Close ends the connection.
func (c *Client) Close() error {
	c.wmu.Lock()
	c.w.Write([]byte{packets.Disconnect << 4, 0})
	c.w.Flush()
	c.wmu.Unlock()
	return c.conn.Close()
}

func (c *Client) write(pk packets.Packet) error {
	pk.ProtocolVersion = c.version
	var b bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&b)
	case packets.Publish:
		err = pk.PublishEncode(&b)
	case packets.Puback:
		err = pk.PubackEncode(&b)
	case packets.Subscribe:
		pk.FixedHeader.Qos = 1
		err = pk.SubscribeEncode(&b)
	default:
		return fmt.Errorf("mqttc cannot send packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	// A broker that stops reading fails the write instead of hanging
	// the load generator.
	c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.w.Write(b.Bytes()); err != nil {
		return err
	}
	return c.w.Flush()
}

const writeTimeout = 10 * time.Second

func (c *Client) packetID() uint16 {
	for {
		if id := uint16(c.nextID.Add(1)); id != 0 {
			return id
		}
	}
}

// request sends a packet and waits for the acknowledgement with its id.
func (c *Client) request(ctx context.Context, pk packets.Packet) (packets.Packet, error) {
	ch := make(chan packets.Packet, 1)
	c.mu.Lock()
	c.waiting[pk.PacketID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, pk.PacketID)
		c.mu.Unlock()
	}()
	if err := c.write(pk); err != nil {
		return packets.Packet{}, err
	}
	select {
	case ack := <-ch:
		return ack, nil
	case <-c.done:
		return packets.Packet{}, fmt.Errorf("connection ended: %w", c.err)
	case <-ctx.Done():
		return packets.Packet{}, ctx.Err()
	}
}

// Subscribe subscribes to one filter and returns the granted code.
func (c *Client) Subscribe(ctx context.Context, filter string, qos byte) (byte, error) {
	ack, err := c.request(ctx, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: c.packetID(),
		Filters: packets.Subscriptions{{Filter: filter, Qos: qos}}})
	if err != nil {
		return 0, err
	}
	if len(ack.ReasonCodes) != 1 {
		return 0, errors.New("SUBACK without a code")
	}
	return ack.ReasonCodes[0], nil
}

// Publish sends a message; at QoS 1 it waits for the PUBACK.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, qos byte) error {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, Payload: payload}
	if qos == 0 {
		return c.write(pk)
	}
	pk.PacketID = c.packetID()
	ack, err := c.request(ctx, pk)
	if err != nil {
		return err
	}
	if ack.ReasonCode >= 0x80 {
		return fmt.Errorf("PUBACK %#x", ack.ReasonCode)
	}
	return nil
}

func (c *Client) readLoop(r *bufio.Reader) {
	defer close(c.done)
	for {
		pk, err := readPacket(r, c.version)
		if err != nil {
			c.err = err
			c.conn.Close()
			return
		}
		switch pk.FixedHeader.Type {
		case packets.Publish:
			if c.OnMessage != nil {
				c.OnMessage(pk.TopicName, pk.Payload)
			}
			if pk.FixedHeader.Qos > 0 {
				if err := c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}); err != nil {
					c.err = err
					c.conn.Close()
					return
				}
			}
		case packets.Puback, packets.Suback:
			c.mu.Lock()
			ch := c.waiting[pk.PacketID]
			c.mu.Unlock()
			if ch != nil {
				ch <- pk
			}
		case packets.Disconnect:
			c.err = fmt.Errorf("DISCONNECT %#x", pk.ReasonCode)
			c.conn.Close()
			return
		}
	}
}

// readPacket reads and decodes one packet.
func readPacket(r *bufio.Reader, version byte) (packets.Packet, error) {
	hb, err := r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(hb); err != nil {
		return packets.Packet{}, err
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return packets.Packet{}, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return packets.Packet{}, err
	}
	fh.Remaining = int(n)
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: version}
	switch fh.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		if len(body) > 0 {
			err = pk.DisconnectDecode(body)
		}
	}
	return pk, err
}

// PublishAsync sends a QoS 1 message and returns at once; wait waits for
// its PUBACK. A publisher keeps several in flight by calling wait on the
// oldest: a broker acknowledges one connection's publishes in order.
func (c *Client) PublishAsync(topic string, payload []byte) (wait func(context.Context) error, err error) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: topic, Payload: payload, PacketID: c.packetID()}
	ch := make(chan packets.Packet, 1)
	c.mu.Lock()
	c.waiting[pk.PacketID] = ch
	c.mu.Unlock()
	done := func() {
		c.mu.Lock()
		delete(c.waiting, pk.PacketID)
		c.mu.Unlock()
	}
	if err := c.write(pk); err != nil {
		done()
		return nil, err
	}
	return func(ctx context.Context) error {
		defer done()
		select {
		case ack := <-ch:
			if ack.ReasonCode >= 0x80 {
				return fmt.Errorf("PUBACK %#x", ack.ReasonCode)
			}
			return nil
		case <-c.done:
			return fmt.Errorf("connection ended: %w", c.err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}, nil
}
