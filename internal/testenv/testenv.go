// Package testenv gives tests the external servers they need: each helper
// returns the address of a real server, or skips the test with the reason
// when none is configured. With ROOST_TEST_STRICT=1 (as .ci/run sets) a
// missing server fails the test instead, so CI cannot pass by skipping.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
)

// Strict reports whether missing servers fail tests instead of skipping them.
func Strict() bool { return os.Getenv("ROOST_TEST_STRICT") == "1" }

// Require skips t, or fails it in strict mode, with the reason a server is
// missing.
func Require(t testing.TB, reason string) {
	t.Helper()
	if Strict() {
		t.Fatalf("%s (ROOST_TEST_STRICT=1 turns this skip into a failure)", reason)
	}
	t.Skip(reason)
}

// RedisURL returns the URL of the Redis server that ROOST_TEST_REDIS_URL
// names. Tests share it: each keeps to its own key prefix.
func RedisURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("ROOST_TEST_REDIS_URL")
	if url == "" {
		Require(t, "ROOST_TEST_REDIS_URL is not set; `make services` starts a local Redis and prints it")
	}
	return url
}

// StripeURL returns the URL of the stripe-mock server that
// ROOST_TEST_STRIPE_URL names.
func StripeURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("ROOST_TEST_STRIPE_URL")
	if url == "" {
		Require(t, "ROOST_TEST_STRIPE_URL is not set; `make services` starts stripe-mock (go install github.com/stripe/stripe-mock@v0.203.0) and prints it")
	}
	return url
}

// PostgresURL returns the URL of a new, empty database on the Postgres server
// that ROOST_TEST_POSTGRES_URL names, dropped when the test ends.
func PostgresURL(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("ROOST_TEST_POSTGRES_URL")
	if admin == "" {
		Require(t, "ROOST_TEST_POSTGRES_URL is not set; `make services` starts a local Postgres and prints it")
	}
	db, err := sql.Open("pgx", admin)
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := make([]byte, 6)
	rand.Read(b)
	name := "roost_test_" + hex.EncodeToString(b)
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("pgx", admin)
		if err != nil {
			return
		}
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("parse ROOST_TEST_POSTGRES_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// Buffer is a bytes.Buffer safe for concurrent writers, for capturing a
// server's log or output in tests.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Redis is a redis-server process of the test's own, for tests that stop,
// pause and restart it. It keeps its data in an append-only file synced on
// every write, so a restart keeps what it acknowledged.
type Redis struct {
	t    testing.TB
	Addr string
	dir  string
	cmd  *exec.Cmd
}

// StartRedis starts a private redis-server, or skips (fails in strict mode)
// when Debian's redis-server is not installed.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		Require(t, "redis-server is not installed (apt-get install redis-server)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := &Redis{t: t, Addr: addr, dir: t.TempDir()}
	r.Start()
	t.Cleanup(func() { r.Stop() })
	return r
}

// Start runs the server (again) on the same port and data.
func (r *Redis) Start() {
	r.t.Helper()
	_, port, _ := net.SplitHostPort(r.Addr)
	r.cmd = exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", r.dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "")
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", r.Addr, 100*time.Millisecond); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.t.Fatal("redis-server did not start")
}

// Stop ends the server; stopping a stopped server does nothing.
func (r *Redis) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Signal(syscall.SIGCONT)
		r.cmd.Process.Kill()
		r.cmd.Wait()
		r.cmd = nil
	}
}

// Pause freezes the server with SIGSTOP; Resume thaws it.
func (r *Redis) Pause()  { r.cmd.Process.Signal(syscall.SIGSTOP) }
func (r *Redis) Resume() { r.cmd.Process.Signal(syscall.SIGCONT) }

// Postgres is a Postgres server of the test's own, for tests that stop and
// restart it (the shared one of ROOST_TEST_POSTGRES_URL serves other
// packages' tests at the same time).
type Postgres struct {
	t    testing.TB
	URL  string
	bin  string
	dir  string
	port string
}

// StartPostgres initialises and starts a private Postgres on a free port,
// or skips (fails in strict mode) when Debian's postgresql is not
// installed. As root it runs the server as the postgres user, since initdb
// refuses to run as root.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		Require(t, "postgresql is not installed (apt-get install postgresql)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	dir, err := os.MkdirTemp("", "roost-pg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &Postgres{t: t, bin: filepath.Dir(bins[len(bins)-1]), dir: dir, port: port,
		URL: "postgres://postgres@127.0.0.1:" + port + "/postgres?sslmode=disable"}
	if os.Getuid() == 0 {
		os.Chmod(dir, 0o755)
		if out, err := exec.Command("chown", "-R", "postgres:postgres", dir).CombinedOutput(); err != nil {
			t.Fatalf("chown %s: %v %s", dir, err, out)
		}
	}
	if out, err := p.asPostgres("initdb", "-D", filepath.Join(dir, "data"), "-U", "postgres", "-A", "trust", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.Start()
	t.Cleanup(p.Stop)
	return p
}

func (p *Postgres) asPostgres(tool string, args ...string) *exec.Cmd {
	path := filepath.Join(p.bin, tool)
	if os.Getuid() == 0 {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	}
	return exec.Command(path, args...)
}

// Start runs the server (again) on the same port and data.
func (p *Postgres) Start() {
	p.t.Helper()
	opts := "-c listen_addresses=127.0.0.1 -p " + p.port + " -k " + p.dir + " -c fsync=off -c max_connections=100"
	if out, err := p.asPostgres("pg_ctl", "-D", filepath.Join(p.dir, "data"), "-l", filepath.Join(p.dir, "server.log"), "-w", "-t", "60", "-o", opts, "start").CombinedOutput(); err != nil {
		p.t.Fatalf("start postgres: %v\n%s", err, out)
	}
}

// Stop stops the server at once, dropping its connections.
func (p *Postgres) Stop() {
	p.asPostgres("pg_ctl", "-D", filepath.Join(p.dir, "data"), "-m", "immediate", "stop").Run()
}
