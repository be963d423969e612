package transport

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// WebSocketPath is where MQTT over WebSocket is served.
const WebSocketPath = "/mqtt"

// Subprotocols are the WebSocket subprotocols a client may ask for: "mqtt"
// (MQTT 3.1.1 and 5) and "mqttv3.1", which older clients send.
var Subprotocols = []string{"mqtt", "mqttv3.1"}

var writeBuffers sync.Pool

// WebSocket is the HTTP handler of MQTT over WebSocket: it upgrades a
// request for WebSocketPath and hands the connection, as a byte stream of
// binary messages, to serve, which returns when the connection ends.
// Devices prove who they are in CONNECT, not with cookies, so any Origin is
// accepted.
func WebSocket(serve func(net.Conn), log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	up := websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   2048,
		WriteBufferPool:  &writeBuffers,
		Subprotocols:     Subprotocols,
		CheckOrigin:      func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			log.Info("websocket upgrade refused", "remote", r.RemoteAddr, "status", status, "reason", reason.Error())
			http.Error(w, "MQTT over WebSocket: "+reason.Error(), status)
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != WebSocketPath {
			http.Error(w, "MQTT over WebSocket is served at "+WebSocketPath, http.StatusNotFound)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return // the upgrader answered
		}
		serve(NewWebSocketConn(ws))
	})
}

// wsConn is a WebSocket connection as the byte stream MQTT runs on: reads
// run across binary messages, and each write is one binary message.
type wsConn struct {
	ws  *websocket.Conn
	r   io.Reader
	wmu sync.Mutex
}

// NewWebSocketConn turns a WebSocket connection, server or client side,
// into a net.Conn.
func NewWebSocketConn(ws *websocket.Conn) net.Conn { return &wsConn{ws: ws} }

var errTextMessage = errors.New("websocket: MQTT needs binary messages")

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			mt, r, err := c.ws.NextReader()
			if err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					return 0, io.EOF
				}
				return 0, err
			}
			if mt != websocket.BinaryMessage {
				return 0, errTextMessage
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close sends a close frame, if it can at once, and closes the connection.
func (c *wsConn) Close() error {
	c.CloseWrite()
	return c.ws.Close()
}

// CloseWrite sends a close frame, if it can at once: WebSocket's end of
// the write side, after which the connection can still be read. (The
// ingress ends each layer's write side in turn before it closes a
// connection; see broker/linger.go.) A second close frame is not sent.
func (c *wsConn) CloseWrite() error {
	return c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(100*time.Millisecond))
}

func (c *wsConn) LocalAddr() net.Addr                { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr               { return c.ws.RemoteAddr() }
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }
func (c *wsConn) SetDeadline(t time.Time) error {
	return errors.Join(c.ws.SetReadDeadline(t), c.ws.SetWriteDeadline(t))
}
