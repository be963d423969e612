package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/roosthub/roost/bench"
	"github.com/roosthub/roost/bench/mqttc"
)

// sizes are a suite's scenario sizes.
type sizes struct {
	runs           int
	connClients    int
	p2pPairs       int
	p2pDuration    time.Duration
	fanoutSubs     int
	fanoutRate     int
	fanoutDuration time.Duration
	idleConns      int
	idleSettle     time.Duration
	tenants        int
	tenantDevices  int
	tenantIdle     time.Duration // long enough for CPU time's 10 ms ticks
	latencyRate    int           // p2p messages a second over all pairs, for latency
	latencySizes   []int
	sustainedQoS   []byte
	sustainedStart int
	sustainedStep  time.Duration
	sustainedSteps int
	sustainedP99   time.Duration // a step is sustained with its p99 below it
	faninPubs      int
	faninGroup     int
	faninRate      int
	faninDuration  time.Duration
}

var suites = map[string]sizes{
	"quick": {runs: 3, connClients: 500, p2pPairs: 8, p2pDuration: 2 * time.Second, fanoutSubs: 200, fanoutRate: 500, fanoutDuration: 2 * time.Second, idleConns: 1000, idleSettle: time.Second,
		tenants: 100, tenantDevices: 10, tenantIdle: 6 * time.Second, latencyRate: 2000, latencySizes: []int{16},
		sustainedQoS: []byte{1}, sustainedStart: 2000, sustainedStep: time.Second, sustainedSteps: 5, sustainedP99: 10 * time.Millisecond,
		faninPubs: 500, faninGroup: 4, faninRate: 5000, faninDuration: time.Second},
	"full": {runs: 3, connClients: 5000, p2pPairs: 32, p2pDuration: 10 * time.Second, fanoutSubs: 1000, fanoutRate: 200, fanoutDuration: 10 * time.Second, idleConns: 5000, idleSettle: 3 * time.Second,
		tenants: 1000, tenantDevices: 10, tenantIdle: 30 * time.Second, latencyRate: 5000, latencySizes: []int{16, 256},
		sustainedQoS: []byte{0, 1}, sustainedStart: 2000, sustainedStep: 3 * time.Second, sustainedSteps: 8, sustainedP99: 10 * time.Millisecond,
		faninPubs: 5000, faninGroup: 8, faninRate: 10000, faninDuration: 5 * time.Second},
	// smoke checks that every piece runs, in seconds; its figures mean
	// nothing (its sustained-rate bound is 1 s, so that a step on a busy
	// machine still counts, and a failed step is followed by three more at
	// lower rates, so that a busy moment does not leave a target at 0).
	"smoke": {runs: 1, connClients: 20, p2pPairs: 2, p2pDuration: 200 * time.Millisecond, fanoutSubs: 5, fanoutRate: 200, fanoutDuration: 200 * time.Millisecond, idleConns: 20, idleSettle: 50 * time.Millisecond,
		tenants: 3, tenantDevices: 2, tenantIdle: time.Second, latencyRate: 200, latencySizes: []int{16, 256},
		sustainedQoS: []byte{1}, sustainedStart: 200, sustainedStep: 200 * time.Millisecond, sustainedSteps: 4, sustainedP99: time.Second,
		faninPubs: 20, faninGroup: 2, faninRate: 400, faninDuration: 200 * time.Millisecond},
}

// process is a broker the suite started.
type process struct {
	target bench.Target
	cmd    *exec.Cmd
	// call makes a REST call as the benchmark's account (Roost only).
	call func(method, path string, body, out any) error
	// unsupported are the figures this broker cannot produce, with the
	// reason; the suite skips them and says why.
	unsupported map[string]string
	// debug is the address of its debug listener, which serves Go's
	// profiler (Go brokers only).
	debug string
	// counters reads what the broker counted itself (Roost and bare mochi
	// only; see counters.go).
	counters func() (map[string]int64, error)
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) stop() {
	p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// canPin reports whether brokers can be pinned to one CPU: the machine
// has more than one and taskset is there.
func canPin() bool {
	if runtime.NumCPU() < 2 {
		return false
	}
	_, err := exec.LookPath("taskset")
	return err == nil
}

// brokerCmd runs a broker pinned to CPU 0 when pin is set and canPin. The
// load generator is not pinned: it may run on any CPU, CPU 0 included. A
// Go broker pinned so runs with GOMAXPROCS 1 (the runtime reads the
// affinity mask). Unpinned, the broker may use every CPU, as the load
// generator does: the whole-machine run.
func brokerCmd(pin bool, name string, args ...string) *exec.Cmd {
	if pin && canPin() {
		return exec.Command("taskset", append([]string{"-c", "0", name}, args...)...)
	}
	return exec.Command(name, args...)
}

func waitPort(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %s after %v", addr, within)
}

// startMochi runs bare mochi-mqtt in a child process of this binary:
// tuned as Roost tunes its instances, or with mochi's defaults.
func startMochi(name string, tuned, pin bool, logs io.Writer) (*process, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	debugAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	args := []string{"-serve-mochi", addr, "-mochi-debug", debugAddr}
	if tuned {
		args = append(args, "-mochi-tuned")
	}
	cmd := brokerCmd(pin, self, args...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{target: bench.Target{Name: name, Addr: addr, ClientPrefix: "b-", GC: gcAt(debugAddr)}, cmd: cmd,
		debug: debugAddr, counters: debugCounters(debugAddr)}
	if err := waitPort(addr, 10*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// gcAt asks the broker whose debug listener is at addr to collect garbage
// and return freed memory to the system.
func gcAt(addr string) func() error {
	return func() error {
		resp, err := http.Post("http://"+addr+"/debug/gc", "", nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			return fmt.Errorf("POST /debug/gc: %s", resp.Status)
		}
		return nil
	}
}

// serveDebug starts the debug listener of a Go broker in a child process
// of this binary, when addr is set: it answers POST /debug/gc and serves
// Go's profiler as roost serve's does, and, given counters, serves them as
// JSON at /debug/counters. It serves until the process ends.
func serveDebug(addr string, counters func() map[string]int64) error {
	if addr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /debug/gc", func(w http.ResponseWriter, _ *http.Request) {
		debug.FreeOSMemory()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	if counters != nil {
		mux.HandleFunc("GET /debug/counters", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(counters())
		})
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go http.Serve(ln, mux)
	return nil
}

// serveMochi is the child process of startMochi.
func serveMochi(addr, debugAddr string, tuned bool) error {
	opts := &mqtt.Options{}
	if tuned {
		caps := mqtt.NewDefaultServerCapabilities()
		caps.MaximumClientWritesPending = 1024 // as broker.newInstance
		caps.TopicAliasMaximum = 64
		opts.Capabilities = caps
	}
	srv := mqtt.New(opts)
	if err := serveDebug(debugAddr, func() map[string]int64 { return mochiCounts(srv) }); err != nil {
		return err
	}
	if err := srv.AddHook(new(bench.AllowAll), nil); err != nil {
		return err
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "bench", Address: addr})); err != nil {
		return err
	}
	if err := srv.Serve(); err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	<-ctx.Done()
	return srv.Close()
}

// startMosquitto runs Debian's mosquitto with defaults and TCP_NODELAY, or returns nil if
// it is not installed.
func startMosquitto(dir string, pin bool, logs io.Writer) (*process, error) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
			if _, err := os.Stat(p); err == nil {
				bin = p
			}
		}
		if bin == "" {
			return nil, nil
		}
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "mosquitto.conf")
	// Defaults, but for Nagle's algorithm: every Go broker here and every
	// client turn it off, and with it on a fixed-rate latency run measures
	// delayed ACKs (p99 of 16-18 ms at 2,000 msgs/s).
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("listener %s %s\nallow_anonymous true\nset_tcp_nodelay true\n", port, host)), 0o644); err != nil {
		return nil, err
	}
	cmd := brokerCmd(pin, bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{target: bench.Target{Name: "mosquitto", Addr: addr, ClientPrefix: "b-"}, cmd: cmd}
	if err := waitPort(addr, 10*time.Second); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// startRoost runs `roost serve` with embedded defaults, makes a tenant on
// the enterprise plan with its rates lifted and a device any client id may
// use, and returns it as a target: auth, ACL, quota and metering hooks all
// run, through the ingress.
func startRoost(ctx context.Context, bin, dir string, pin bool, logs io.Writer, env ...string) (*process, error) {
	mqttAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	httpAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	debugAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	const admin = "rop_roost-bench-operator-token"
	cmd := brokerCmd(pin, bin, "serve")
	cmd.Env = append(os.Environ(), "ROOST_DATA_DIR="+filepath.Join(dir, "roost"), "ROOST_MQTT_ADDR="+mqttAddr,
		"ROOST_HTTP_ADDR="+httpAddr, "ROOST_ADMIN_TOKEN="+admin, "ROOST_DEBUG_ADDR="+debugAddr,
		// The idle-tenant scenario makes hundreds of tenants from one account.
		"ROOST_MAX_FREE_TENANTS=0", "ROOST_TENANTS_PER_DAY=0",
		// The webhook figure's receiver is on this machine's loopback.
		"ROOST_WEBHOOK_ALLOW_HOSTS=127.0.0.1")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd}
	fail := func(err error) (*process, error) { p.stop(); return nil, err }
	base := "http://" + httpAddr
	// Pinned to one core of a busy machine (CI runs the other packages'
	// tests beside this one), the first start, with its migrations, has
	// taken over 20 s.
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return fail(errors.New("roost serve did not become ready"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	call := func(method, path, token string, body any, out any) error {
		b, _ := json.Marshal(body)
		req, _ := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode >= 300 {
			msg, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("%s %s: %s %s", method, path, resp.Status, msg)
		}
		if out != nil {
			return json.NewDecoder(resp.Body).Decode(out)
		}
		return nil
	}
	var session struct{ Token string }
	var device struct{ Secret string }
	unlimited := int64(1) << 40
	steps := []error{
		call("POST", "/v1/signup", "", map[string]string{"email": "bench@example.com", "password": "correct horse battery"}, &session),
	}
	if steps[0] == nil {
		steps = append(steps,
			call("POST", "/v1/tenants", session.Token, map[string]string{"slug": "bench"}, nil),
			call("POST", "/v1/tenants/bench/devices", session.Token, map[string]string{"name": "bench", "client_ids": "any"}, &device),
			call("PATCH", "/v1/admin/tenants/bench", admin, map[string]any{"plan": "enterprise", "quotas": map[string]int64{
				"publish_rate": unlimited, "tenant_publish_rate": unlimited, "connect_rate": unlimited, "max_connections": unlimited,
				"bandwidth_in": unlimited, "bandwidth_out": unlimited, "messages_per_month": unlimited, "max_subscriptions": unlimited,
				"max_outbox": unlimited}}, nil))
	}
	if err := errors.Join(steps...); err != nil {
		return fail(err)
	}
	p.target = bench.Target{Name: "roost", Addr: mqttAddr, Username: "bench/bench", Password: device.Secret, ClientPrefix: "b-", GC: gcAt(debugAddr)}
	p.debug, p.counters = debugAddr, roostCounters(base, admin)
	p.call = func(method, path string, body, out any) error { return call(method, path, session.Token, body, out) }
	time.Sleep(200 * time.Millisecond) // the quota change reaches the data plane
	return p, nil
}

// suiteResult is written to bench/results/<name>.json.
type suiteResult struct {
	Suite       string      `json:"suite"`
	Time        time.Time   `json:"time"`
	CPUs        int         `json:"cpus"`
	Calibration calibration `json:"calibration"`
	// Pinned is whether the first run's brokers were pinned to CPU 0; the
	// whole-machine run's never are.
	Pinned  bool              `json:"pinned"`
	Targets []string          `json:"targets"`
	Missing map[string]string `json:"missing,omitempty"`
	// Unsupported are the figures a target cannot produce: target → figure
	// → why.
	Unsupported map[string]map[string]string `json:"unsupported,omitempty"`
	// Figures are the medians by figure and target; a figure of the
	// whole-machine run has wholeSuffix after its name.
	Figures map[string]map[string]float64 `json:"figures"`
	// Spread is each figure's median, lowest and highest over the runs.
	Spread map[string]map[string]bench.Summary `json:"spread"`
	Runs   map[string]map[string][]any         `json:"runs"`
	// Drops are, by figure and target, what the broker counted itself
	// during each run (Roost and bare mochi): its drops by reason beside
	// what the bench counted lost, and Roost's other counters that explain
	// a loss (counters.go).
	Drops    map[string]map[string][]runCounts `json:"drops,omitempty"`
	Ratios   map[string]*float64               `json:"ratios"`
	Absolute map[string]*float64               `json:"absolute"`
	// pinnedOnly is a run without the whole-machine part (-only).
	pinnedOnly bool
}

// wholeSuffix ends the names of the whole-machine run's figures and ratios.
const wholeSuffix = "_whole"

// peers are the brokers Roost is compared with, by target name.
var peers = []string{"mochi", "mosquitto", "nats"}

// compared are the figures the ratios compare Roost with each peer on, by
// the name their ratios take: <name>_roost_vs_<peer>, and
// <name>_roost_vs_<peer>_whole for the whole-machine run. A figure the
// suite did not measure (256-byte latency at quick size) has no ratios.
var compared = []struct {
	name, figure string
	morePeers    []string
}{
	{name: "p2p_qos0_throughput", figure: "p2p_qos0_throughput"},
	{name: "p2p_qos1_throughput", figure: "p2p_qos1_throughput"},
	{name: "p2p_qos0_sustained", figure: "p2p_qos0_sustained"},
	{name: "p2p_qos1_sustained", figure: "p2p_qos1_sustained"},
	{name: "p2p_qos0_p99_latency", figure: "p2p_qos0_16b_p99_us"},
	{name: "p2p_qos1_p99_latency", figure: "p2p_qos1_16b_p99_us"},
	{name: "p2p_qos0_256b_p99_latency", figure: "p2p_qos0_256b_p99_us"},
	{name: "p2p_qos1_256b_p99_latency", figure: "p2p_qos1_256b_p99_us"},
	{name: "fanout_qos0_throughput", figure: "fanout_qos0_throughput"},
	{name: "fanin_qos1_throughput", figure: "fanin_qos1_throughput"},
	{name: "fanin_shared_qos1_throughput", figure: "fanin_shared_qos1_throughput"},
	{name: "connect_rate", figure: "connect_rate"},
	{name: "idle_conn_memory", figure: "idle_conn_memory", morePeers: []string{"mochi-default"}},
	// Lower is better, as for memory and latency: a ratio under 1 is
	// Roost making fewer write syscalls per message than the peer.
	{name: "p2p_qos0_write_syscalls_per_msg", figure: "p2p_qos0_write_syscalls_per_msg"},
	{name: "p2p_qos1_write_syscalls_per_msg", figure: "p2p_qos1_write_syscalls_per_msg"},
	{name: "p2p_qos1_pipelined_throughput", figure: "p2p_qos1_pipelined_throughput"},
	{name: "p2p_qos1_pipelined_write_syscalls_per_msg", figure: "p2p_qos1_pipelined_write_syscalls_per_msg"},
}

// p2pWindow is how many QoS 1 messages each publisher of the pipelined p2p
// scenario keeps in flight.
const p2pWindow = 16

// ratios compares Roost with each peer on every figure of compared that
// was measured, in either run: nil where the peer has no figure (not
// installed, or a figure it cannot produce).
func ratios(figures map[string]map[string]float64) map[string]*float64 {
	out := map[string]*float64{}
	for _, c := range compared {
		for _, run := range []string{"", wholeSuffix} {
			by, ok := figures[c.figure+run]
			if !ok {
				continue
			}
			for _, peer := range append(slices.Clone(peers), c.morePeers...) {
				var r *float64
				if x, ok := by["roost"]; ok {
					if y, ok := by[peer]; ok && y != 0 {
						r = new(x / y)
					}
				}
				out[c.name+"_roost_vs_"+strings.ReplaceAll(peer, "-", "_")+run] = r
			}
		}
	}
	// The webhook figures against the same run without a rule (the sync
	// policy changes nothing there: a clean subscriber's publish is not
	// stored).
	for _, w := range []struct{ figure, none, run string }{
		{webhookFigure, "p2p_qos1_throughput", ""}, {webhookFigure, "p2p_qos1_throughput", wholeSuffix},
		{webhookIntervalFigure, "p2p_qos1_throughput", ""},
		{webhookPipelinedFigure, "p2p_qos1_pipelined_throughput", ""}, {webhookPipelinedFigure, "p2p_qos1_pipelined_throughput", wholeSuffix},
	} {
		if with, ok := figures[w.figure+w.run]["roost"]; ok {
			if none, ok := figures[w.none+w.run]["roost"]; ok && none > 0 {
				out[w.figure+"_vs_none"+w.run] = new(with / none)
			}
		}
	}
	if among, ok := figures["p2p_qos1_p99_us_among_idle_tenants"]["roost"]; ok {
		if alone, ok := figures["p2p_qos1_16b_p99_us"]["roost"]; ok && alone > 0 {
			out["p2p_qos1_p99_latency_among_idle_tenants_vs_alone"] = new(among / alone)
		}
	}
	noisyRatios(figures, out)
	return out
}

// starter starts one target of the suite, pinned or not, keeping what it
// writes under dir; memoryOnly is a target the whole-machine run leaves out.
type starter struct {
	name       string
	memoryOnly bool
	skip       bool // not needed for the figures selected
	start      func(pin bool, dir string) (*process, error)
}

// suiteExtra are the suite's options beyond its size and targets.
type suiteExtra struct {
	// runs, when above 0, is how many runs each figure takes instead of
	// the suite's.
	runs int
	// profile, when set, is a directory for CPU profiles of the Go brokers
	// (Roost, bare mochi, NATS), one for each run of each figure, taken
	// through their debug listeners while the run goes:
	// <target>-<figure>-<run>.pprof.
	profile string
	// trace has profile take execution traces instead of CPU profiles:
	// <target>-<figure>-<run>.trace, for go tool trace (where a goroutine
	// waited, which a CPU profile does not show).
	trace bool
	// roostB, when set, is a second roost binary, started and measured
	// beside the first as the target "roost-b": two builds compared in
	// one run, on a machine whose load varies from one run to the next.
	roostB string
}

// settleEvery is how often settle reads the broker's CPU time, and
// settleMax how long it waits at most.
const (
	settleEvery = 250 * time.Millisecond
	settleMax   = 20 * time.Second
)

// settle waits until the broker process pid is idle — it used under a
// tenth of a CPU over settleEvery — or max has passed, and returns how
// long it waited. After a QoS 0 flood a broker reads the publishes left in
// its sockets' buffers for seconds after the publishers have gone; a run
// started then would measure that too.
func settle(pid int, max time.Duration) (time.Duration, error) {
	start := time.Now()
	for time.Since(start) < max {
		t0, err := bench.CPUTime(pid)
		if err != nil {
			return time.Since(start), err
		}
		time.Sleep(settleEvery)
		t1, err := bench.CPUTime(pid)
		if err != nil {
			return time.Since(start), err
		}
		if idleOver(t1-t0, settleEvery) {
			break
		}
	}
	return time.Since(start), nil
}

// idleOver reports whether cpu time used over a period is under a tenth
// of it.
func idleOver(cpu, period time.Duration) bool { return cpu*10 < period }

// figureNames are the figures of the suite's pinned run, by which -only
// selects (the write syscalls per message come with their throughput
// figures).
func figureNames(sz sizes) []string {
	names := []string{"idle_conn_memory", "p2p_qos1_p99_us_among_idle_tenants"}
	for _, qos := range []byte{0, 1} {
		names = append(names, fmt.Sprintf("p2p_qos%d_throughput", qos))
		if qos == 1 {
			names = append(names, webhookFigure, webhookIntervalFigure)
		}
		for _, size := range sz.latencySizes {
			names = append(names, fmt.Sprintf("p2p_qos%d_%db_p99_us", qos, size))
		}
	}
	for _, qos := range sz.sustainedQoS {
		names = append(names, fmt.Sprintf("p2p_qos%d_sustained", qos))
	}
	return append(names, "fanout_qos0_throughput", "fanin_qos1_throughput", "fanin_shared_qos1_throughput", "connect_rate", "p2p_qos1_pipelined_throughput",
		webhookPipelinedFigure)
}

// runSuite starts every target and runs every scenario on each with the
// brokers pinned to one CPU, then starts them afresh on the whole machine
// and runs the throughput and connect scenarios again; then it writes the
// results and prints a table.
//
// only "memory" runs the memory scenarios alone (idle tenants and idle
// connections, pinned), measured as in the whole suite, and writes
// <suite>-memory.json: a quick look at memory that leaves <suite>.json as
// it was. only a comma-separated list of the pinned run's figures
// (figureNames) runs those alone, pinned, and writes <suite>-only.json.
func runSuite(ctx context.Context, name, only, roostBin, outDir string, x suiteExtra, out io.Writer) error {
	sz, ok := suites[name]
	if !ok {
		return fmt.Errorf("unknown suite %q (quick, full or smoke)", name)
	}
	memoryOnly := only == "memory"
	selected := map[string]bool{}
	if only != "" && !memoryOnly {
		known := figureNames(sz)
		for _, f := range strings.Split(only, ",") {
			if !slices.Contains(known, f) {
				return fmt.Errorf("unknown -only %q (memory, or figures of the pinned run: %s)", only, strings.Join(known, ", "))
			}
			selected[f] = true
		}
	}
	// want is whether to run a figure of the pinned run.
	want := func(figure string) bool { return len(selected) == 0 || selected[figure] }
	if x.runs > 0 {
		sz.runs = x.runs
	}
	if x.profile != "" {
		if err := os.MkdirAll(x.profile, 0o755); err != nil {
			return err
		}
	}
	profileFor := max(sz.p2pDuration, sz.fanoutDuration)
	dir, err := os.MkdirTemp("", "roost-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logs, err := os.Create(filepath.Join(dir, "brokers.log"))
	if err != nil {
		return err
	}
	defer logs.Close()
	cal, err := calibrate()
	if err != nil {
		return err
	}
	hook, err := startReceiver()
	if err != nil {
		return err
	}
	defer hook.close()
	res := suiteResult{Suite: name, Time: time.Now().UTC(), CPUs: runtime.NumCPU(), Calibration: cal, Pinned: canPin(),
		Missing: map[string]string{}, Unsupported: map[string]map[string]string{},
		Figures: map[string]map[string]float64{}, Spread: map[string]map[string]bench.Summary{}, Runs: map[string]map[string][]any{},
		Ratios: map[string]*float64{}, Absolute: map[string]*float64{}, Drops: map[string]map[string][]runCounts{}}

	starters := []starter{
		{name: "roost", start: func(pin bool, dir string) (*process, error) { return startRoost(ctx, roostBin, dir, pin, logs) }},
		{name: "roost-b", skip: x.roostB == "", start: func(pin bool, dir string) (*process, error) {
			p, err := startRoost(ctx, x.roostB, filepath.Join(dir, "roost-b"), pin, logs)
			if p != nil {
				p.target.Name = "roost-b"
			}
			return p, err
		}},
		{name: "mochi", start: func(pin bool, _ string) (*process, error) { return startMochi("mochi", true, pin, logs) }},
		{name: "mochi-default", memoryOnly: true, skip: len(selected) > 0 && !selected["idle_conn_memory"], start: func(pin bool, _ string) (*process, error) {
			return startMochi("mochi-default", false, pin, logs)
		}},
		{name: "mosquitto", start: func(pin bool, dir string) (*process, error) { return startMosquitto(dir, pin, logs) }},
		{name: "nats", start: func(pin bool, dir string) (*process, error) { return startNats(dir, pin, logs) }},
	}
	var procs []*process
	stopAll := func() {
		for _, p := range procs {
			p.stop()
		}
		procs = nil
	}
	defer stopAll()
	// startAll starts the targets of one run; whole leaves out the
	// memory-only ones and pins none.
	startAll := func(whole bool, dir string) error {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, s := range starters {
			if whole && s.memoryOnly || s.skip {
				continue
			}
			p, err := s.start(!whole, dir)
			switch {
			case err != nil:
				return fmt.Errorf("start %s: %w", s.name, err)
			case p == nil:
				res.Missing[s.name] = "not installed"
				continue
			}
			procs = append(procs, p)
			if !whole {
				res.Targets = append(res.Targets, s.name)
			}
		}
		return nil
	}
	if err := startAll(false, dir); err != nil {
		return err
	}
	record := func(figure, target string, runs []any, values []float64) {
		if res.Figures[figure] == nil {
			res.Figures[figure] = map[string]float64{}
			res.Spread[figure] = map[string]bench.Summary{}
			res.Runs[figure] = map[string][]any{}
		}
		sum := bench.Summarise(values)
		res.Figures[figure][target] = sum.Median
		res.Spread[figure][target] = sum
		res.Runs[figure][target] = runs
	}
	// repeat runs a figure's runs on p, with the broker's own counters
	// read around each (and a CPU profile taken during each, if asked).
	repeat := func(figure string, p *process, run func() (any, float64, error)) error {
		target := p.target.Name
		var runs []any
		var v []float64
		var counts []runCounts
		for i := range sz.runs {
			var before map[string]int64
			if p.counters != nil {
				var err error
				if before, err = p.counters(); err != nil {
					return fmt.Errorf("%s %s: counters: %w", target, figure, err)
				}
			}
			stopProfile := func() error { return nil }
			if x.profile != "" && p.debug != "" {
				kind, ext := "profile", "pprof"
				if x.trace {
					kind, ext = "trace", "trace"
				}
				stopProfile = profile(p.debug, kind, profileFor, filepath.Join(x.profile, fmt.Sprintf("%s-%s-%d.%s", target, figure, i+1, ext)))
			}
			r, val, err := run()
			if perr := stopProfile(); perr != nil {
				fmt.Fprintf(out, "warning: %s %s run %d: profile: %v\n", target, figure, i+1, perr)
			}
			if err != nil {
				return fmt.Errorf("%s %s: %w", target, figure, err)
			}
			runs, v = append(runs, r), append(v, val)
			// A flood leaves publishes in the socket buffers that the
			// broker goes on reading after the run: the next run waits
			// for them, and the counters below include them.
			if waited, err := settle(p.pid(), settleMax); err != nil {
				return fmt.Errorf("%s %s: settle: %w", target, figure, err)
			} else if waited >= time.Second {
				fmt.Fprintf(out, "%s %s run %d: the broker worked on for %.1f s after the run\n", target, figure, i+1, waited.Seconds())
			}
			if p.counters != nil {
				after, err := p.counters()
				if err != nil {
					return fmt.Errorf("%s %s: counters: %w", target, figure, err)
				}
				c := countsBetween(before, after)
				c.Lost = lostIn(r)
				counts = append(counts, c)
				if c.Lost != nil && *c.Lost > 0 || c.dropped() > 0 {
					lost := "no tally"
					if c.Lost != nil {
						lost = fmt.Sprintf("the bench counted %d lost", *c.Lost)
					}
					fmt.Fprintf(out, "%s %s run %d: %s; %s counted dropped %v\n", target, figure, i+1, lost, target, c.Dropped)
				}
			}
		}
		record(figure, target, runs, v)
		if counts != nil {
			if res.Drops[figure] == nil {
				res.Drops[figure] = map[string][]runCounts{}
			}
			res.Drops[figure][target] = counts
		}
		return nil
	}
	// latency is a p2p run at a fixed rate, judged by its p99 in µs.
	// A broker that cannot keep the rate up, or loses messages, is a
	// result, not a failure of the suite: the run is kept (its tally and
	// what was sent are in the JSON) and a warning printed.
	latency := func(t bench.Target, qos byte, size int) (any, float64, error) {
		r, err := bench.P2P(ctx, t, sz.p2pPairs, qos, size, sz.latencyRate, sz.p2pDuration)
		if err == nil && !bench.Sustainable(r, sz.latencyRate, sz.p2pDuration, time.Second) {
			fmt.Fprintf(out, "warning: %s did not sustain %d msgs/s cleanly: sent %d, p99 %.1f ms, %+v\n", t.Name, sz.latencyRate, r.Sent, r.P99, r.Tally)
		}
		return r, r.P99 * 1000, err
	}

	// Idle tenants in a Roost process of their own, started fresh and
	// stopped before the others are measured: memory and CPU per tenant, then,
	// with them still connected, latency in another tenant.
	res.Absolute["idle_tenant_memory_bytes"] = nil
	res.Absolute["idle_tenant_cpu_ms_per_s"] = nil
	if err := func() error {
		if len(selected) > 0 && !selected["p2p_qos1_p99_us_among_idle_tenants"] {
			return nil
		}
		p, err := startRoost(ctx, roostBin, filepath.Join(dir, "tenants"), true, logs)
		if err != nil {
			return fmt.Errorf("start roost for tenants: %w", err)
		}
		defer p.stop()
		idle, err := idleTenants(ctx, p, sz.tenants, sz.tenantDevices, sz.tenantIdle)
		if err != nil {
			return fmt.Errorf("roost tenants: %w", err)
		}
		defer idle.close()
		res.Absolute["idle_tenant_memory_bytes"], res.Absolute["idle_tenant_cpu_ms_per_s"] = &idle.memPerTenant, &idle.cpuMsPerSec
		fmt.Fprintf(out, "%d idle tenants with %d idle device connections each: %.0f bytes and %.4f ms CPU/s per tenant\n",
			sz.tenants, sz.tenantDevices, idle.memPerTenant, idle.cpuMsPerSec)
		if memoryOnly {
			return nil
		}
		return repeat("p2p_qos1_p99_us_among_idle_tenants", p, func() (any, float64, error) { return latency(p.target, 1, 16) })
	}(); err != nil {
		return err
	}

	// measure runs the scenarios on one broker: in the pinned run every
	// one, memory first; in the whole-machine run the throughput and
	// connect scenarios, their figures named with wholeSuffix.
	measure := func(p *process, whole bool) error {
		t := p.target
		type step struct {
			figure string
			run    func() (any, float64, error)
		}
		var steps []step
		for _, qos := range []byte{0, 1} {
			steps = append(steps, step{fmt.Sprintf("p2p_qos%d_throughput", qos), func() (any, float64, error) {
				r, err := bench.P2P(ctx, t, sz.p2pPairs, qos, 16, 0, sz.p2pDuration)
				return r, r.PerSecond, err
			}})
			if qos == 1 {
				// The same run with one rule sending every message to a
				// webhook (webhook.go): Roost alone has rules.
				steps = append(steps, step{webhookFigure, func() (any, float64, error) {
					r, err := webhookP2P(ctx, p, hook, func() (bench.P2PResult, error) {
						return bench.P2P(ctx, t, sz.p2pPairs, 1, 16, 0, sz.p2pDuration)
					})
					return r, r.PerSecond, err
				}})
			}
			if whole {
				continue
			}
			for _, size := range sz.latencySizes {
				steps = append(steps, step{fmt.Sprintf("p2p_qos%d_%db_p99_us", qos, size), func() (any, float64, error) { return latency(t, qos, size) }})
			}
		}
		for _, qos := range sz.sustainedQoS {
			steps = append(steps, step{fmt.Sprintf("p2p_qos%d_sustained", qos), func() (any, float64, error) {
				r, err := bench.MaxSustained(ctx, t, sz.p2pPairs, qos, 16, sz.sustainedStart, sz.sustainedStep, sz.sustainedSteps, sz.sustainedP99)
				return r, r.PerSecond, err
			}})
		}
		steps = append(steps,
			step{"fanout_qos0_throughput", func() (any, float64, error) {
				r, err := bench.Fanout(ctx, t, sz.fanoutSubs, 0, sz.fanoutRate, sz.fanoutDuration)
				return r, r.PerSecond, err
			}},
			step{"fanin_qos1_throughput", func() (any, float64, error) {
				r, err := bench.Fanin(ctx, t, sz.faninPubs, 0, 1, sz.faninRate, sz.faninDuration)
				return r, r.PerSecond, err
			}},
			step{"fanin_shared_qos1_throughput", func() (any, float64, error) {
				r, err := bench.Fanin(ctx, t, sz.faninPubs, sz.faninGroup, 1, sz.faninRate, sz.faninDuration)
				return r, r.PerSecond, err
			}},
			step{"connect_rate", func() (any, float64, error) {
				r, err := bench.Conn(ctx, t, sz.connClients, 0, 100*time.Millisecond)
				return r, r.PerSecond, err
			}},
		)
		// p2p QoS 1 with p2pWindow messages in flight per publisher: a
		// broker that answers a burst of publishes in one write shows it
		// here (see bench.P2PPipelined).
		steps = append(steps, step{"p2p_qos1_pipelined_throughput", func() (any, float64, error) {
			r, err := bench.P2PPipelined(ctx, t, sz.p2pPairs, 16, p2pWindow, sz.p2pDuration)
			return r, r.PerSecond, err
		}}, step{webhookPipelinedFigure, func() (any, float64, error) {
			r, err := webhookP2P(ctx, p, hook, func() (bench.P2PResult, error) {
				return bench.P2PPipelined(ctx, t, sz.p2pPairs, 16, p2pWindow, sz.p2pDuration)
			})
			return r, r.PerSecond, err
		}})
		suffix := ""
		if whole {
			suffix = wholeSuffix
		}
		// Write syscalls per message delivered, read from /proc around each
		// p2p throughput run and recorded beside it (lower is better): how
		// well the broker batches what it sends.
		perMsg, perMsgRuns := map[string][]float64{}, map[string][]any{}
		for i, s := range steps {
			name, ok := strings.CutSuffix(s.figure, "_throughput")
			if !ok || !strings.HasPrefix(name, "p2p_") {
				continue
			}
			figure, run := name+"_write_syscalls_per_msg", s.run
			steps[i].run = func() (any, float64, error) {
				w0, err0 := bench.WriteSyscalls(p.pid())
				r, v, err := run()
				w1, err1 := bench.WriteSyscalls(p.pid())
				if pr, ok := r.(bench.P2PResult); ok && err == nil && err0 == nil && err1 == nil && pr.Tally.Received > 0 {
					perMsg[figure] = append(perMsg[figure], float64(w1-w0)/float64(pr.Tally.Received))
					perMsgRuns[figure] = append(perMsgRuns[figure], map[string]int64{"write_syscalls": w1 - w0, "delivered": int64(pr.Tally.Received)})
				}
				return r, v, err
			}
		}
		for _, s := range steps {
			if !want(s.figure) {
				continue
			}
			why, ok := p.unsupported[s.figure]
			if !ok && isWebhookFigure(s.figure) && p.call == nil {
				why, ok = webhookUnsupported, true
			}
			if ok {
				if res.Unsupported[t.Name] == nil {
					res.Unsupported[t.Name] = map[string]string{}
				}
				res.Unsupported[t.Name][s.figure] = why
				continue
			}
			if err := repeat(s.figure+suffix, p, s.run); err != nil {
				return err
			}
		}
		for figure, v := range perMsg {
			record(figure+suffix, t.Name, perMsgRuns[figure], v)
		}
		return nil
	}

	for _, p := range procs {
		t := p.target
		fmt.Fprintf(out, "%s ...\n", t.Name)
		// Memory first, while the broker holds nothing else. Each run's
		// connections stay open until the last run, so that every run
		// measures fresh growth.
		if want("idle_conn_memory") {
			var held []func()
			err := repeat("idle_conn_memory", p, func() (any, float64, error) {
				per, closeIdle, err := bench.IdleConnections(ctx, t, p.pid(), sz.idleConns, sz.idleSettle)
				held = append(held, closeIdle)
				return per, per, err
			})
			for _, closeIdle := range held {
				closeIdle()
			}
			if err != nil {
				return err
			}
		}
		if t.Name == "mochi-default" || memoryOnly { // for memory only
			continue
		}
		if err := measure(p, false); err != nil {
			return err
		}
	}

	// The webhook figure again, on a Roost whose embedded store syncs on
	// an interval (webhook.go), started for it and stopped after.
	if !memoryOnly && want(webhookIntervalFigure) {
		if err := func() error {
			p, err := startRoost(ctx, roostBin, filepath.Join(dir, "interval"), true, logs, "ROOST_STORE_SYNC=interval")
			if err != nil {
				return fmt.Errorf("start roost with ROOST_STORE_SYNC=interval: %w", err)
			}
			defer p.stop()
			fmt.Fprintf(out, "roost, ROOST_STORE_SYNC=interval ...\n")
			return repeat(webhookIntervalFigure, p, func() (any, float64, error) {
				r, err := webhookP2P(ctx, p, hook, func() (bench.P2PResult, error) {
					return bench.P2P(ctx, p.target, sz.p2pPairs, 1, 16, 0, sz.p2pDuration)
				})
				return r, r.PerSecond, err
			})
		}(); err != nil {
			return err
		}
	}

	// The noisy neighbour, on every target as it is (noisy.go).
	if len(selected) == 0 {
		if err := noisyNeighbour(ctx, name, procs, record, &res, out); err != nil {
			return err
		}
	}

	// The whole machine: the same brokers started afresh, unpinned.
	stopAll()
	res.pinnedOnly = memoryOnly || len(selected) > 0
	if !res.pinnedOnly {
		if err := startAll(true, filepath.Join(dir, "whole")); err != nil {
			return err
		}
		for _, p := range procs {
			fmt.Fprintf(out, "%s, whole machine ...\n", p.target.Name)
			if err := measure(p, true); err != nil {
				return err
			}
		}
		stopAll()
	}

	res.Ratios = ratios(res.Figures)
	if m, ok := res.Figures["idle_conn_memory"]["roost"]; ok {
		res.Absolute["idle_conn_memory_bytes"] = &m
		// The instance alone: the tenant's share less its idle connections.
		if t := res.Absolute["idle_tenant_memory_bytes"]; t != nil {
			inst := *t - float64(sz.tenantDevices)*m
			res.Absolute["idle_tenant_instance_bytes"] = &inst
		}
	}

	printTable(out, res)
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	switch {
	case memoryOnly:
		name += "-memory"
	case len(selected) > 0:
		name += "-only"
	}
	path := filepath.Join(outDir, name+".json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(out, "results: %s\n", path)
	return nil
}

func printTable(out io.Writer, res suiteResult) {
	var figures []string
	for f := range res.Figures {
		figures = append(figures, f)
	}
	sort.Strings(figures)
	fmt.Fprintf(out, "\n%-48s", "median of runs")
	for _, t := range res.Targets {
		fmt.Fprintf(out, "%15s", t)
	}
	fmt.Fprintln(out)
	for _, f := range figures {
		fmt.Fprintf(out, "%-48s", f)
		for _, t := range res.Targets {
			if v, ok := res.Figures[f][t]; ok && strings.Contains(f, "_per_msg") {
				fmt.Fprintf(out, "%15.2f", v)
			} else if ok {
				fmt.Fprintf(out, "%15.0f", v)
			} else {
				fmt.Fprintf(out, "%15s", "-")
			}
		}
		fmt.Fprintln(out)
	}
	fmt.Fprintln(out, "lower is better for idle_conn_memory, *_p99_us and *_write_syscalls_per_msg: their ratios favour Roost under 1")
	var names []string
	for k := range res.Ratios {
		names = append(names, k)
	}
	sort.Strings(names)
	fmt.Fprintln(out)
	for _, k := range names {
		if v := res.Ratios[k]; v != nil {
			fmt.Fprintf(out, "%-56s %6.2f\n", k, *v)
		} else {
			fmt.Fprintf(out, "%-56s %6s\n", k, "n/a")
		}
	}
	for k, why := range res.Missing {
		fmt.Fprintf(out, "%s: %s\n", k, why)
	}
	for t, figures := range res.Unsupported {
		for f, why := range figures {
			fmt.Fprintf(out, "%s: no %s: %s\n", t, f, why)
		}
	}
	pinning := "brokers pinned to CPU 0, then on the whole machine (figures and ratios ending in " + wholeSuffix + ")"
	switch {
	case !res.Pinned:
		pinning = "brokers NOT pinned in either run (one CPU, or no taskset)"
	case res.pinnedOnly:
		pinning = "brokers pinned to CPU 0 (no whole-machine run)"
	}
	fmt.Fprintf(out, "loopback RTT %.1f µs, %.0f small writes/s, %d CPUs; %s\n", res.Calibration.LoopbackRTTMicros, res.Calibration.SmallWritesPerSecond, res.CPUs, pinning)
}

// idleResult is what idleTenants measured; close disconnects its devices.
type idleResult struct {
	memPerTenant, cpuMsPerSec float64
	close                     func()
}

// idleTenants makes n tenants with devices devices each, connects them and
// leaves them idle, and returns what each tenant adds to the broker
// process: resident memory after GC (its broker instance and its idle connections)
// and CPU time per second of idling, less what the process used idling
// before. The devices stay connected until close.
func idleTenants(ctx context.Context, p *process, n, devices int, idle time.Duration) (idleResult, error) {
	cpuIdle := func() (time.Duration, error) {
		t0, err := bench.CPUTime(p.pid())
		if err != nil {
			return 0, err
		}
		time.Sleep(idle)
		t1, err := bench.CPUTime(p.pid())
		return t1 - t0, err
	}
	var clients []*mqttc.Client
	res := idleResult{close: func() {
		for _, c := range clients {
			c.Close()
		}
	}}
	fail := func(err error) (idleResult, error) { res.close(); return idleResult{}, err }
	// Tenants and devices are registered first: what the control plane
	// keeps for them (its database pages, the directory) is not the data
	// plane's cost.
	type cred struct{ username, clientID, secret string }
	var creds []cred
	for i := range n {
		slug := fmt.Sprintf("idle-%04d", i)
		if err := p.call("POST", "/v1/tenants", map[string]string{"slug": slug}, nil); err != nil {
			return fail(err)
		}
		for d := range devices {
			var device struct{ Secret string }
			name := fmt.Sprintf("d%d", d)
			if err := p.call("POST", "/v1/tenants/"+slug+"/devices", map[string]string{"name": name}, &device); err != nil {
				return fail(err)
			}
			creds = append(creds, cred{slug + "/" + name, name, device.Secret})
		}
	}
	baseline, err := cpuIdle()
	if err != nil {
		return fail(err)
	}
	rss := func() (int64, error) {
		if err := p.target.GC(); err != nil {
			return 0, err
		}
		return bench.RSS(p.pid())
	}
	before, err := rss()
	if err != nil {
		return fail(err)
	}
	for _, c := range creds {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cl, err := mqttc.Dial(cctx, p.target.Addr, mqttc.Options{ClientID: c.clientID, Username: c.username, Password: c.secret, KeepAlive: 600})
		cancel()
		if err != nil {
			return fail(fmt.Errorf("connect %s: %w", c.username, err))
		}
		clients = append(clients, cl)
	}
	time.Sleep(time.Second)
	after, err := rss()
	if err != nil {
		return fail(err)
	}
	used, err := cpuIdle()
	if err != nil {
		return fail(err)
	}
	res.memPerTenant = float64(after-before) / float64(n)
	res.cpuMsPerSec = float64((used - baseline).Microseconds()) / 1000 / idle.Seconds() / float64(n)
	return res, nil
}
