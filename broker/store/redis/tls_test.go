package redis_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/redis"
	"github.com/roosthub/roost/internal/testenv"
)

// TestTLSIdleConnectionClosed: over rediss://, a server that closes idle
// clients (here after 1 s, as a managed Redis, a proxy or a restart
// does) leaves the pool connections it closed. The first Append after
// that, which go-redis never sends twice, must go on a live connection
// and succeed: the pool sees a closed TLS connection as it sees a closed
// plain one. Before, it failed with EOF and its publisher was not
// acknowledged.
func TestTLSIdleConnectionClosed(t *testing.T) {
	addr := startTLSRedis(t, "--timeout", "1")
	s, err := redis.New(context.Background(), redis.Config{URL: "rediss://" + addr + "/0?skip_verify=true", Prefix: uniquePrefix()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	for i := range 3 {
		if _, err := s.Append(ctx, "t", []store.Item{{ClientID: "c", Message: message("m")}}, store.Receipt{}); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		if _, err := s.QueueInfo(ctx, "t", "c"); err != nil {
			t.Fatalf("queue info %d: %v", i, err)
		}
		time.Sleep(2500 * time.Millisecond) // the server closes both connections
	}
	got, err := s.Read(ctx, "t", "c", 0, 10)
	if err != nil || len(got) != 3 {
		t.Fatalf("read %d messages, %v; want the 3 appended", len(got), err)
	}
}

// TestTLSDialTimeout: a server that takes the TCP connection and never
// answers the TLS handshake fails the store's start within its
// dial_timeout (and go-redis's retries), not never.
func TestTLSDialTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() }) // held open, silent
		}
	}()
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := redis.New(context.Background(), redis.Config{URL: "rediss://" + ln.Addr().String() + "/0?dial_timeout=1&max_retries=1&skip_verify=true"})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the store started against a server that never handshakes")
		}
		t.Logf("failed after %v: %v", time.Since(start).Round(100*time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatal("the store's start still waits for the handshake after 30s")
	}
}

// TestTLSIdleAheadKept: connections the pool opens ahead (min_idle_conns)
// are used when taken, not judged unhealthy for the server's session
// tickets waiting unread on them and dialled again.
func TestTLSIdleAheadKept(t *testing.T) {
	addr := startTLSRedis(t)
	s, err := redis.New(context.Background(), redis.Config{URL: "rediss://" + addr + "/0?skip_verify=true&min_idle_conns=4", Prefix: uniquePrefix()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	received := func() int64 {
		t.Helper()
		info, err := s.Client().InfoMap(ctx, "stats").Result()
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.ParseInt(info["Stats"]["total_connections_received"], 10, 64)
		return n
	}
	time.Sleep(500 * time.Millisecond) // the pool opens its four
	before := received()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A command alone: pipelines have a pool of their own, which
			// opens none ahead.
			if err := s.Client().Get(ctx, "nothing-here").Err(); err != nil && err.Error() != "redis: nil" {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// The pool dials anew to keep four idle; what must not be is one of
	// them thrown away as stale.
	if st := s.Client().PoolStats(); st.StaleConns != 0 {
		t.Errorf("%d connections opened ahead were thrown away as stale (%d dialled for four commands)", st.StaleConns, received()-before)
	}
}

// TestTLS: the store's whole contract over rediss://, on RESP2 and the
// connections checkableTLS wraps.
func TestTLS(t *testing.T) { runContract(t, "rediss://"+startTLSRedis(t)+"/0?skip_verify=true") }

// startTLSRedis starts a redis-server of the test's own that takes only
// TLS, with a certificate made for it, and returns its address.
func startTLSRedis(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		testenv.Require(t, "redis-server is not installed (apt-get install redis-server)")
	}
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	// The port is picked free and then handed to redis-server, so another
	// socket (an outgoing connection's ephemeral port) may take it in
	// between: the server then exits at once, and is started again on
	// another.
	var out *testenv.Buffer
	for range 5 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		_, port, _ := net.SplitHostPort(addr)
		cmd := exec.Command("redis-server", append([]string{"--port", "0", "--tls-port", port, "--bind", "127.0.0.1", "--dir", dir,
			"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-auth-clients", "no", "--save", "", "--appendonly", "no"}, args...)...)
		out = &testenv.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	wait:
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			select {
			case <-exited:
				if strings.Contains(out.String(), "Address already in use") {
					break wait // the port was taken: another
				}
				t.Fatalf("redis-server with TLS exited:\n%s", out.String())
			default:
			}
			if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
				c.Close()
				select {
				case <-exited: // what answered was another's listener
				default:
					return addr
				}
			}
		}
		select {
		case <-exited:
		default:
			t.Fatalf("redis-server with TLS did not start in 10s:\n%s", out.String())
		}
	}
	t.Fatalf("redis-server with TLS found its port taken five times:\n%s", out.String())
	return ""
}
