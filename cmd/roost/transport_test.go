package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/transport"
)

// Liveness bounds in these tests are generous (15 s): under -race on a
// loaded 2-core machine a TLS handshake and CONNECT once took over 5 s.

// TestServeTransports: with --dev-tls, MQTT over TLS, WebSocket and
// WebSocket over TLS on their own ports, and MQTT over TLS and WebSocket
// over TLS sharing one port; real clients on each (paho v5 over TLS, paho
// 3.1.1 over ws:// and wss://, mosquitto_pub --cafile over TLS) reach a
// subscriber on another transport.
func TestServeTransports(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("shared-port=%v", shared), func(t *testing.T) {
			dir := t.TempDir()
			tlsAddr, wssAddr := freeAddr(t), freeAddr(t)
			if shared {
				wssAddr = tlsAddr
			}
			h := startServe(t, map[string]string{"ROOST_DATA_DIR": dir}, "--dev-tls", "--mqtt-tls-addr", tlsAddr, "--ws-addr", freeAddr(t), "--wss-addr", wssAddr)
			out := h.stdout.String()
			mqtts := regexp.MustCompile(`mqtts://(\S+)`).FindStringSubmatch(out)
			ws := regexp.MustCompile(`ws://(\S+)`).FindStringSubmatch(out)
			wss := regexp.MustCompile(`wss://(\S+)`).FindStringSubmatch(out)
			caFile := filepath.Join(dir, "tls", "ca.pem")
			if mqtts == nil || ws == nil || wss == nil || !strings.Contains(out, "clients trust "+caFile) {
				t.Fatalf("listeners not announced:\n%s", out)
			}
			pool := x509.NewCertPool()
			pem, err := os.ReadFile(caFile)
			if err != nil || !pool.AppendCertsFromPEM(pem) {
				t.Fatalf("ca.pem: %v", err)
			}

			_, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "a@example.com", "password": "correct horse battery"})
			token := m["token"].(string)
			post(t, h.url+"/v1/tenants", token, map[string]string{"slug": "acme"})
			secret := func(name string) string {
				status, m := post(t, h.url+"/v1/tenants/acme/devices", token, map[string]string{"name": name})
				if status != 201 {
					t.Fatalf("create device %s: %d %v", name, status, m)
				}
				return m["secret"].(string)
			}

			// The subscriber: paho v5 over TLS, offering ALPN mqtt.
			got := make(chan string, 10)
			conn, err := tls.Dial("tcp", strings.Replace(mqtts[1], "localhost", "127.0.0.1", 1), &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"mqtt"}})
			if err != nil {
				t.Fatalf("TLS dial: %v", err)
			}
			if p := conn.ConnectionState().NegotiatedProtocol; p != "mqtt" {
				t.Errorf("ALPN: negotiated %q", p)
			}
			sub := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) { got <- string(pr.Packet.Payload); return true, nil }}})
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			if ca, err := sub.Connect(ctx, &paho.Connect{ClientID: "sub", KeepAlive: 30, CleanStart: true, Username: "acme/sub", UsernameFlag: true, Password: []byte(secret("sub")), PasswordFlag: true}); err != nil || ca.ReasonCode != 0 {
				t.Fatalf("connect over TLS: %v %v", ca, err)
			}
			defer sub.Disconnect(&paho.Disconnect{})
			if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/#", QoS: 1}}}); err != nil {
				t.Fatal(err)
			}
			expect := func(want string) {
				t.Helper()
				select {
				case m := <-got:
					if m != want {
						t.Errorf("got %q, want %q", m, want)
					}
				case <-time.After(15 * time.Second):
					t.Errorf("%q never arrived", want)
				}
			}

			// Publishers: paho 3.1.1 over ws:// and wss://.
			for _, url := range []string{"ws://" + ws[1], "wss://" + wss[1]} {
				name := "pub" + strings.SplitN(url, ":", 2)[0]
				o := pahov3.NewClientOptions().AddBroker(strings.Replace(url, "localhost", "127.0.0.1", 1)).SetClientID(name).
					SetUsername("acme/" + name).SetPassword(secret(name)).SetTLSConfig(&tls.Config{RootCAs: pool, ServerName: "localhost"}).
					SetConnectTimeout(15 * time.Second).SetAutoReconnect(false)
				c := pahov3.NewClient(o)
				if tok := c.Connect(); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
					t.Fatalf("connect over %s: %v", url, tok.Error())
				}
				if tok := c.Publish("t/"+name, 1, false, "via "+url); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
					t.Fatalf("publish over %s: %v", url, tok.Error())
				}
				expect("via " + url)
				c.Disconnect(100)
			}

			// mosquitto_pub over TLS, trusting ca.pem; without ALPN on the
			// shared port it is told apart by its CONNECT.
			pub, err := exec.LookPath("mosquitto_pub")
			if err != nil {
				testenv.Require(t, "mosquitto_pub is not installed (apt-get install mosquitto-clients)")
				return
			}
			host, port, _ := net.SplitHostPort(mqtts[1])
			cmd := exec.Command(pub, "-h", host, "-p", port, "--cafile", caFile, "-u", "acme/cli", "-P", secret("cli"), "-i", "cli", "-q", "1", "-t", "t/cli", "-m", "via mosquitto_pub")
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_pub: %v\n%s", err, b)
			}
			expect("via mosquitto_pub")

			// Plain MQTT on the TLS port, and a certificate the client does
			// not trust, are refused.
			if c, err := net.Dial("tcp", mqtts[1]); err == nil {
				c.Write([]byte{0x10, 0x00})
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				b := make([]byte, 16)
				if n, _ := c.Read(b); n > 0 && b[0] == 0x20 {
					t.Error("plain MQTT on the TLS port got a CONNACK")
				}
				c.Close()
			}
			if _, err := tls.Dial("tcp", mqtts[1], &tls.Config{ServerName: "localhost"}); err == nil {
				t.Error("a client that does not trust the development CA completed a handshake")
			}
		})
	}
}

// TestServeProxyProtocol: on a listener that expects it, the address in a
// PROXY header is the device's address in its status; a connection
// without one, or with a second header behind the first, is refused; on a
// listener that does not expect it, a header is refused.
func TestServeProxyProtocol(t *testing.T) {
	h := startServe(t, map[string]string{"ROOST_DATA_DIR": t.TempDir()}, "--proxy-protocol", "mqtt,ws", "--ws-addr", freeAddr(t))
	wsURL := regexp.MustCompile(`ws://(\S+)`).FindStringSubmatch(h.stdout.String())
	if wsURL == nil {
		t.Fatalf("no WebSocket listener announced:\n%s", h.stdout)
	}
	_, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "a@example.com", "password": "correct horse battery"})
	token := m["token"].(string)
	post(t, h.url+"/v1/tenants", token, map[string]string{"slug": "acme"})
	_, d := post(t, h.url+"/v1/tenants/acme/devices", token, map[string]string{"name": "d1"})
	secret := d["secret"].(string)

	connect := func(addr, header string) (*paho.Client, error) {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return nil, err
		}
		conn.Write([]byte(header))
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: "d1", KeepAlive: 30, CleanStart: true, Username: "acme/d1", UsernameFlag: true, Password: []byte(secret), PasswordFlag: true}); err != nil {
			conn.Close()
			return nil, err
		}
		return c, nil
	}
	remote := func() string {
		_, st := get(t, h.url+"/v1/tenants/acme/devices/d1/status", token)
		if conns, _ := st["connections"].([]any); len(conns) == 1 {
			return fmt.Sprint(conns[0].(map[string]any)["remote_addr"])
		}
		return fmt.Sprint(st)
	}
	c, err := connect(h.mqtt, "PROXY TCP4 203.0.113.7 10.0.0.1 40000 1883\r\n")
	if err != nil {
		t.Fatalf("connect behind a PROXY header: %v", err)
	}
	if r := remote(); r != "203.0.113.7:40000" {
		t.Errorf("remote address over TCP: %s", r)
	}
	c.Disconnect(&paho.Disconnect{})

	// A version 2 header in front of a WebSocket.
	v2 := append([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"), 198, 51, 100, 9, 10, 0, 0, 1, 0x9c, 0x41, 0x07, 0x5b)
	dialer := websocket.Dialer{Subprotocols: []string{"mqtt"}, NetDial: func(network, addr string) (net.Conn, error) {
		c, err := net.Dial(network, addr)
		if err == nil {
			_, err = c.Write(v2)
		}
		return c, err
	}}
	ws, _, err := dialer.Dial("ws://"+wsURL[1], nil)
	if err != nil {
		t.Fatalf("WebSocket behind a PROXY header: %v", err)
	}
	wc := paho.NewClient(paho.ClientConfig{Conn: transport.NewWebSocketConn(ws)})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := wc.Connect(ctx, &paho.Connect{ClientID: "d1", KeepAlive: 30, CleanStart: true, Username: "acme/d1", UsernameFlag: true, Password: []byte(secret), PasswordFlag: true}); err != nil {
		t.Fatalf("connect over WebSocket: %v", err)
	}
	if r := remote(); r != "198.51.100.9:40001" {
		t.Errorf("remote address over WebSocket: %s", r)
	}
	wc.Disconnect(&paho.Disconnect{})

	for name, header := range map[string]string{
		"no header":     "",
		"second header": "PROXY TCP4 203.0.113.7 10.0.0.1 40000 1883\r\nPROXY TCP4 198.51.100.1 10.0.0.1 1 1883\r\n",
	} {
		if c, err := connect(h.mqtt, header); err == nil {
			c.Disconnect(&paho.Disconnect{})
			t.Errorf("%s: connected", name)
		}
	}

	plain := startServe(t, map[string]string{"ROOST_DATA_DIR": t.TempDir()})
	conn, err := net.Dial("tcp", plain.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("PROXY TCP4 203.0.113.7 10.0.0.1 40000 1883\r\n\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"))
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, _ := conn.Read(make([]byte, 4)); n > 0 {
		t.Error("a listener that does not expect a PROXY header answered one")
	}
}

// TestServeTenantEndpoints: with --mqtt-domain localhost, a TLS connection
// to acme.localhost belongs to acme: the device name alone is a username,
// acme/<device> is too, a username naming another tenant is refused (and
// that tenant's own device cannot log in through acme's endpoint), and
// without SNI the bare device name is refused.
func TestServeTenantEndpoints(t *testing.T) {
	dir := t.TempDir()
	h := startServe(t, map[string]string{"ROOST_DATA_DIR": dir}, "--dev-tls", "--mqtt-tls-addr", "127.0.0.1:0", "--mqtt-domain", "localhost")
	mqtts := regexp.MustCompile(`mqtts://(\S+)`).FindStringSubmatch(h.stdout.String())
	if mqtts == nil {
		t.Fatalf("no TLS listener:\n%s", h.stdout)
	}
	pem, _ := os.ReadFile(filepath.Join(dir, "tls", "ca.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	_, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "a@example.com", "password": "correct horse battery"})
	token := m["token"].(string)
	secrets := map[string]string{}
	for _, slug := range []string{"acme", "other"} {
		post(t, h.url+"/v1/tenants", token, map[string]string{"slug": slug})
		_, d := post(t, h.url+"/v1/tenants/"+slug+"/devices", token, map[string]string{"name": "d1"})
		secrets[slug] = d["secret"].(string)
	}
	addr := strings.Replace(mqtts[1], "localhost", "127.0.0.1", 1)
	try := func(sni, username, secret string) byte {
		t.Helper()
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: sni})
		if err != nil {
			t.Fatalf("TLS to %s: %v", sni, err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		ca, err := c.Connect(ctx, &paho.Connect{ClientID: "d1", KeepAlive: 30, CleanStart: true, Username: username, UsernameFlag: true, Password: []byte(secret), PasswordFlag: true})
		if ca == nil {
			t.Fatalf("%s as %q: no CONNACK: %v", sni, username, err)
		}
		if ca.ReasonCode == 0 {
			c.Disconnect(&paho.Disconnect{})
		}
		return ca.ReasonCode
	}
	for _, tc := range []struct {
		sni, username, tenant string
		want                  byte
	}{
		{"acme.localhost", "d1", "acme", 0},
		{"ACME.localhost", "d1", "acme", 0},
		{"acme.localhost", "acme/d1", "acme", 0},
		{"acme.localhost", "other/d1", "other", 0x86},
		{"acme.localhost", "d1", "other", 0x86},
		{"other.localhost", "d1", "other", 0},
		{"localhost", "d1", "acme", 0x86},
		{"localhost", "acme/d1", "acme", 0},
	} {
		if got := try(tc.sni, tc.username, secrets[tc.tenant]); got != tc.want {
			t.Errorf("SNI %s, username %q with %s's secret: reason %#x, want %#x", tc.sni, tc.username, tc.tenant, got, tc.want)
		}
	}
}
