package deploy_test

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/roosthub/roost/internal/testenv"
)

// helm finds the helm binary: on the PATH, or where `go install
// helm.sh/helm/v3/cmd/helm@v3.22.0` puts it.
func helm(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	gopath, _ := exec.Command("go", "env", "GOPATH").Output()
	p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "helm")
	if _, err := os.Stat(p); err != nil {
		testenv.Require(t, "helm is not installed (go install helm.sh/helm/v3/cmd/helm@v3.22.0)")
	}
	return p
}

type manifest struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec map[string]any `yaml:"spec"`
}

func render(t *testing.T, sets ...string) ([]manifest, error) {
	t.Helper()
	args := []string{"template", "test", "helm/roost"}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, err := exec.Command(helm(t), args...).CombinedOutput()
	if err != nil {
		return nil, errors.New(string(out))
	}
	var ms []manifest
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var m manifest
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("helm template's output does not parse: %v\n%s", err, out)
		}
		if m.Kind != "" {
			ms = append(ms, m)
		}
	}
	return ms, nil
}

// dig walks nested maps and lists by keys and indexes.
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

// TestHelmChart: the chart lints and renders a control-plane and a
// data-plane Deployment (probes on /healthz and /readyz, non-root), their
// Services, the ConfigMap, PodDisruptionBudgets and the data plane's
// autoscaler; TLS and fixed replicas render too; a missing Secret name and
// a setting without its ROOST_ prefix are refused.
func TestHelmChart(t *testing.T) {
	if out, err := exec.Command(helm(t), "lint", "helm/roost").CombinedOutput(); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	ms, err := render(t)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	kinds := map[string]int{}
	for _, m := range ms {
		kinds[m.Kind]++
		if m.Kind == "Service" && strings.Contains(fmt.Sprint(dig(m.Spec, "ports")), "forward") {
			t.Errorf("%s exposes the forwarding port, which only the data-plane pods may reach: %v", m.Metadata.Name, dig(m.Spec, "ports"))
		}
		if m.Kind != "Deployment" {
			continue
		}
		pod := dig(m.Spec, "template", "spec")
		c := dig(pod, "containers", 0)
		role := dig(c, "args", 0)
		if !strings.HasSuffix(m.Metadata.Name, "-"+role.(string)) {
			t.Errorf("%s runs %v", m.Metadata.Name, role)
		}
		if dig(c, "livenessProbe", "httpGet", "path") != "/healthz" || dig(c, "readinessProbe", "httpGet", "path") != "/readyz" {
			t.Errorf("%s probes: %v %v", m.Metadata.Name, dig(c, "livenessProbe"), dig(c, "readinessProbe"))
		}
		if dig(pod, "securityContext", "runAsNonRoot") != true || dig(c, "securityContext", "allowPrivilegeEscalation") != false {
			t.Errorf("%s is not locked down: %v %v", m.Metadata.Name, dig(pod, "securityContext"), dig(c, "securityContext"))
		}
		if dig(c, "envFrom", 1, "secretRef", "name") != "roost" {
			t.Errorf("%s does not read the Secret: %v", m.Metadata.Name, dig(c, "envFrom"))
		}
		if role == "dataplane" && (dig(c, "env", 1, "name") != "ROOST_NODE_URL" || dig(c, "env", 1, "value") != "http://$(POD_IP):8080") {
			t.Errorf("the data plane does not announce a reachable URL: %v", dig(c, "env"))
		}
		if role == "dataplane" && (dig(c, "env", 2, "name") != "ROOST_FORWARD_ADDR" || dig(c, "env", 2, "value") != ":1884" ||
			!slices.ContainsFunc(dig(c, "ports").([]any), func(p any) bool { return dig(p, "containerPort") == 1884 })) {
			t.Errorf("the data plane does not open its forwarding port to the other pods: %v %v", dig(c, "env"), dig(c, "ports"))
		}
	}
	want := map[string]int{"Deployment": 2, "Service": 2, "ConfigMap": 1, "PodDisruptionBudget": 2, "HorizontalPodAutoscaler": 1}
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("%d %s, want %d (all: %v)", kinds[k], k, n, kinds)
		}
	}

	ms, err = render(t, "dataplane.tlsSecret=roost-tls", "dataplane.autoscaling.enabled=false", "dataplane.replicas=4")
	if err != nil {
		t.Fatalf("helm template with TLS: %v", err)
	}
	found := false
	for _, m := range ms {
		if m.Kind == "HorizontalPodAutoscaler" {
			t.Error("an autoscaler with autoscaling off")
		}
		if m.Kind == "Deployment" && strings.HasSuffix(m.Metadata.Name, "-dataplane") {
			found = true
			if dig(m.Spec, "replicas") != 4 || dig(m.Spec, "template", "spec", "containers", 0, "ports", 3, "name") != "mqtts" {
				t.Errorf("the data plane with TLS and 4 replicas: %v", m.Spec)
			}
		}
	}
	if !found {
		t.Error("no data-plane Deployment")
	}
	if _, err := render(t, "existingSecret="); err == nil || !strings.Contains(err.Error(), "existingSecret") {
		t.Errorf("no Secret name: %v", err)
	}
	if _, err := render(t, "config.LOG_FORMAT=json"); err == nil || !strings.Contains(err.Error(), "ROOST_") {
		t.Errorf("a setting without its prefix: %v", err)
	}
}

// TestDockerfileBuildsMakesBinary runs the Dockerfile's build step as
// written (no Docker engine here) and checks what it made: `make build`'s
// static binary (no ELF interpreter, CGO_ENABLED=0, trimmed paths, the
// version stamped), and a final stage that runs it as a non-root user.
func TestDockerfileBuildsMakesBinary(t *testing.T) {
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) > 0 && line != "" && !strings.HasPrefix(line, "#") {
			stages[len(stages)-1] = append(stages[len(stages)-1], line)
		}
	}
	if len(stages) != 2 {
		t.Fatalf("want a build stage and a final stage, got %d stages", len(stages))
	}
	var build string
	for _, l := range stages[0] {
		if strings.HasPrefix(l, "RUN ") && strings.Contains(l, "make build") {
			build = strings.TrimPrefix(l, "RUN ")
		}
	}
	if build == "" {
		t.Fatalf("the build stage does not run `make build`: %q", stages[0])
	}
	final := strings.Join(stages[1], "\n")
	for _, want := range []string{"COPY --from=build /src/bin/roost /usr/local/bin/roost", "USER 65532:65532", `ENTRYPOINT ["/usr/local/bin/roost"]`} {
		if !strings.Contains(final, want) {
			t.Errorf("the final stage lacks %q:\n%s", want, final)
		}
	}
	if !strings.Contains(stages[1][0], "distroless/static") {
		t.Errorf("the final stage is not a static distroless base: %s", stages[1][0])
	}

	cmd := exec.Command("sh", "-c", strings.ReplaceAll(build, "${VERSION}", "dockertest"))
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the Dockerfile's build step (%s): %v\n%s", build, err, out)
	}
	bin := filepath.Join("..", "bin", "roost")
	e, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, p := range e.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary is dynamically linked (it has an ELF interpreter)")
		}
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	// (Go does not record -ldflags of a -trimpath build: `roost version`
	// below shows the stamp.)
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings: %v", settings)
	}
	if out, err := exec.Command(bin, "version").Output(); err != nil || strings.TrimSpace(string(out)) != "roost dockertest" {
		t.Errorf("roost version: %q %v", out, err)
	}
}

// TestComposeStack: the staging stack runs one control plane and two
// data-plane nodes of one image, on one database, token and session store,
// on distinct host ports, after Postgres is healthy.
func TestComposeStack(t *testing.T) {
	b, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Command     []string          `yaml:"command"`
			Ports       []string          `yaml:"ports"`
			Environment map[string]string `yaml:"environment"`
			DependsOn   map[string]struct {
				Condition string `yaml:"condition"`
			} `yaml:"depends_on"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	roles := map[string]int{}
	hostPorts := map[string]string{}
	var db, token string
	for name, s := range c.Services {
		if s.Image != "roost:staging" {
			continue
		}
		roles[s.Command[0]]++
		if db == "" {
			db, token = s.Environment["ROOST_DATABASE_URL"], s.Environment["ROOST_ADMIN_TOKEN"]
		}
		if s.Environment["ROOST_DATABASE_URL"] != db || s.Environment["ROOST_ADMIN_TOKEN"] != token || s.Environment["ROOST_SESSION_STORE"] != "redis" {
			t.Errorf("%s does not share the database, token and session store: %v", name, s.Environment)
		}
		if s.Command[0] == "dataplane" && s.Environment["ROOST_NODE_URL"] != "http://"+name+":8080" {
			t.Errorf("%s announces %q, not its own service name", name, s.Environment["ROOST_NODE_URL"])
		}
		if s.DependsOn["postgres"].Condition != "service_healthy" {
			t.Errorf("%s does not wait for Postgres", name)
		}
		for _, p := range s.Ports {
			host, _, _ := strings.Cut(p, ":")
			if other, dup := hostPorts[host]; dup {
				t.Errorf("host port %s used by %s and %s", host, other, name)
			}
			hostPorts[host] = name
		}
	}
	if roles["controlplane"] != 1 || roles["dataplane"] != 2 {
		t.Errorf("roles: %v", roles)
	}
	for _, s := range []string{"postgres", "redis", "kafka"} {
		if _, ok := c.Services[s]; !ok {
			t.Errorf("no %s service", s)
		}
	}
}
