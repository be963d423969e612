package dataout_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

var msg = dataout.Input{
	Topic: "sites/lab/sensor-1/temp", Payload: []byte(`{"temp": 31.5, "unit": "C", "tags": ["a", "b"]}`), QoS: 1,
	Device: "sensor-1", ClientID: "sensor-1-c", Time: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC),
	Metadata: map[string]string{"room": "lab", "floor": "2"},
}

func TestConditionMatches(t *testing.T) {
	for _, tc := range []struct {
		cond  string
		in    dataout.Input
		match bool
	}{
		{`payload.temp > 30`, msg, true},
		{`payload.temp > 30.0 && payload.unit == "C"`, msg, true},
		{`payload.temp < 30`, msg, false},
		{`"b" in payload.tags`, msg, true},
		{`topic_levels[1] == "lab" && topic_levels.size() == 4`, msg, true},
		{`topic.startsWith("sites/") && topic.endsWith("/temp")`, msg, true},
		{`device == "sensor-1" && client_id == "sensor-1-c" && qos == 1`, msg, true},
		{`metadata.room == "lab" && int(metadata.floor) >= 2`, msg, true},
		{`"missing" in metadata`, msg, false},
		{`time > timestamp("2026-01-01T00:00:00Z") && time.getHours() == 12`, msg, true},
		{`payload == b"on"`, dataout.Input{Topic: "x", Payload: []byte("on")}, true},
		{`string(payload).contains("alarm")`, dataout.Input{Topic: "x", Payload: []byte("fire alarm!")}, true},
		{`payload > 20`, dataout.Input{Topic: "x", Payload: []byte("21.5")}, true},
		{`size(metadata) == 0`, dataout.Input{Topic: "x"}, true},
		{`payload.enabled`, dataout.Input{Topic: "x", Payload: []byte(`{"enabled": true}`)}, true},
	} {
		c, err := dataout.CompileCondition(tc.cond)
		if err != nil {
			t.Errorf("%s: compile: %v", tc.cond, err)
			continue
		}
		got, err := c.Eval(context.Background(), tc.in)
		if err != nil || got != tc.match {
			t.Errorf("%s on %s: got %v, %v; want %v", tc.cond, tc.in.Payload, got, err, tc.match)
		}
	}
}

// TestConditionErrorsPoint: a condition that does not compile is an error
// naming the line and column of its first problem.
func TestConditionErrorsPoint(t *testing.T) {
	for _, tc := range []struct {
		cond         string
		line, column int
		says         string
	}{
		{`payload.temp >`, 1, 15, "Syntax error"},
		{`paylod.temp > 30`, 1, 1, "undeclared reference to 'paylod'"},
		{"topic == \"a\" &&\n  devise == \"x\"", 2, 3, "undeclared reference to 'devise'"},
		{`qos == "1"`, 1, 5, "no matching overload"},
		{`topic`, 1, 1, "must be true or false"},
		{`   `, 1, 1, "empty"},
	} {
		_, err := dataout.CompileCondition(tc.cond)
		var ce *dataout.ConditionError
		if !errors.As(err, &ce) {
			t.Errorf("%q: got %v, want a ConditionError", tc.cond, err)
			continue
		}
		if ce.Line != tc.line || ce.Column != tc.column || !strings.Contains(ce.Msg, tc.says) {
			t.Errorf("%q: got line %d column %d %q, want line %d column %d saying %q", tc.cond, ce.Line, ce.Column, ce.Msg, tc.line, tc.column, tc.says)
		}
	}
}

// TestConditionCostLimit: a condition that would burn CPU stops at the
// cost limit and does not match; the same shape, small, is fine.
func TestConditionCostLimit(t *testing.T) {
	big := `[` + strings.TrimSuffix(strings.Repeat("1,", 100), ",") + `]`
	c, err := dataout.CompileCondition(big + `.all(a, ` + big + `.all(b, ` + big + `.all(c, a + b + c > 0)))`)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, err := c.Eval(context.Background(), msg)
	// The time limit may come first (under -race, on a busy machine).
	if got || !errors.Is(err, dataout.ErrCostLimit) && !errors.Is(err, dataout.ErrTimeLimit) {
		t.Errorf("a million iterations: got %v, %v; want no match and ErrCostLimit", got, err)
	}
	// Generous for -race on a busy machine; unbounded would be minutes.
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("stopping took %v", d)
	}
	small, _ := dataout.CompileCondition(`[1,2,3].all(a, [1,2,3].all(b, a + b > 0))`)
	if ok, err := small.Eval(context.Background(), msg); !ok || err != nil {
		t.Errorf("a small comprehension: %v, %v", ok, err)
	}
}

func TestConditionRuntimeError(t *testing.T) {
	c, err := dataout.CompileCondition(`payload.humidity > 50`)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Eval(context.Background(), msg); ok || err == nil {
		t.Errorf("a missing field: got %v, %v; want no match with an error", ok, err)
	}
}

func TestRuleMatch(t *testing.T) {
	r, err := dataout.CompileRule(tenants.ExportRule{ID: "exp_1", Filter: "sites/+/+/temp", Condition: "payload.temp > 30", Destination: "dst_1"})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := r.Match(context.Background(), msg); !ok || err != nil {
		t.Errorf("matching topic and condition: %v, %v", ok, err)
	}
	other := msg
	other.Topic = "sites/lab/sensor-1/humidity"
	if ok, _ := r.Match(context.Background(), other); ok {
		t.Error("a topic outside the filter matched")
	}
	cold := msg
	cold.Payload = []byte(`{"temp": 3}`)
	if ok, _ := r.Match(context.Background(), cold); ok {
		t.Error("a message failing the condition matched")
	}
}

func TestRuleSet(t *testing.T) {
	set, errs := dataout.CompileRules([]tenants.ExportRule{
		{ID: "hot", Filter: "sites/#", Condition: "payload.temp > 30", Destination: "d"},
		{ID: "all", Filter: "#", Destination: "d"},
		{ID: "broken", Filter: "#", Condition: "payload.temp >", Destination: "d"},
		{ID: "humid", Filter: "sites/#", Condition: "payload.humidity > 50", Destination: "d"},
		{ID: "elsewhere", Filter: "other/#", Destination: "d"},
	})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "rule broken") {
		t.Errorf("compile errors: %v, want rule broken's", errs)
	}
	got := map[string]string{}
	for _, m := range set.Match(context.Background(), msg) {
		got[m.Rule.ID] = fmt.Sprint(m.Err)
	}
	if len(got) != 3 || got["hot"] != "<nil>" || got["all"] != "<nil>" || got["humid"] == "<nil>" {
		t.Errorf("matches: %v, want hot and all, and humid's evaluation error", got)
	}
	// AppendMatches appends the same, in the same order, after what the
	// buffer holds.
	held := dataout.Match{Err: errors.New("held")}
	appended := set.AppendMatches(context.Background(), []dataout.Match{held}, msg)
	want := set.Match(context.Background(), msg)
	if len(appended) != 1+len(want) || appended[0].Err != held.Err {
		t.Fatalf("appended %d matches after the one held (%v), want %d", len(appended)-1, appended[0].Err, len(want))
	}
	for i, m := range want {
		if appended[1+i].Rule != m.Rule {
			t.Errorf("appended match %d is rule %s, want %s", i, appended[1+i].Rule.ID, m.Rule.ID)
		}
	}
}

// BenchmarkRuleSet is the cost of matching one JSON message against a
// tenant's rules (each with a condition; a tenth of them match its topic),
// without and with a projection on each rule.
func BenchmarkRuleSet(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		for _, projection := range []string{"", `{"t": payload.temp, "room": metadata.room, "site": topic_levels[1]}`} {
			b.Run(fmt.Sprintf("rules=%d/projection=%v", n, projection != ""), func(b *testing.B) { benchmarkRuleSet(b, n, projection) })
		}
	}
}

func benchmarkRuleSet(b *testing.B, n int, projection string) {
	var rules []tenants.ExportRule
	for i := range n {
		rules = append(rules, tenants.ExportRule{ID: fmt.Sprint(i), Filter: fmt.Sprintf("sites/%d/+/temp", i%10),
			Condition: fmt.Sprintf(`payload.temp > %d && metadata.room == "lab"`, i), Projection: projection, Destination: "d"})
	}
	set, errs := dataout.CompileRules(rules)
	if len(errs) > 0 {
		b.Fatal(errs)
	}
	in := msg
	in.Topic = "sites/0/sensor-1/temp"
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		set.Match(ctx, in)
	}
}

// TestReplaceBounded: a replace that would grow past MaxStringResult
// fails before building it (ext.Strings' own builds it, quadratically,
// before the cost limit sees it); an ordinary one works as before, with
// and without a count.
func TestReplaceBounded(t *testing.T) {
	in := dataout.Input{Topic: "x", Payload: []byte(`{"s": "` + strings.Repeat("a", 16<<10) + `"}`)}
	c, err := dataout.CompileCondition(`size(payload.s.replace("a", payload.s)) > 0`)
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ok, err := c.Eval(context.Background(), in)
	runtime.ReadMemStats(&after)
	if ok || err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("a quadratic replace: %v, %v; want refused", ok, err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("refusing it allocated %d MB", grew>>20)
	}
	for src, want := range map[string]bool{
		`"a-b-c".replace("-", "+") == "a+b+c"`:    true,
		`"a-b-c".replace("-", "+", 1) == "a+b-c"`: true,
		`"abc".replace("", "_") == "_a_b_c_"`:     true,
	} {
		c, err := dataout.CompileCondition(src)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := c.Eval(context.Background(), in); got != want || err != nil {
			t.Errorf("%s: %v, %v", src, got, err)
		}
	}
}

// TestCompilerReuses: a Compiler compiles a rule again only when its
// condition or projection changed; a rule reused takes the rest (its id,
// filter, destination) from the new list.
func TestCompilerReuses(t *testing.T) {
	var c dataout.Compiler
	const cond, proj = `payload.temp > 30`, `{"t": payload.temp}`
	hot := dataout.Input{Topic: "b/1", Payload: []byte(`{"temp": 31}`)}
	first, errs := c.Compile([]tenants.ExportRule{{ID: "exp_1", Filter: "a/#", Condition: cond, Projection: proj, Destination: "dst_a"}})
	if len(errs) != 0 || len(first) != 1 {
		t.Fatalf("Compile: %d rules, errors %v", len(first), errs)
	}
	set, errs := c.CompileRules([]tenants.ExportRule{
		{ID: "exp_2", Filter: "b/#", Condition: cond, Projection: proj, Destination: "dst_b"},
		{ID: "exp_3", Filter: "b/#", Condition: cond + " && qos == 0", Destination: "dst_c"},
		{ID: "exp_4", Filter: "b/#", Condition: "payload.temp >"},
	})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "exp_4") {
		t.Errorf("errors %v, want one naming exp_4", errs)
	}
	var got []string
	for _, m := range set.Match(context.Background(), hot) {
		got = append(got, fmt.Sprintf("%s %s %s %v", m.Rule.ID, m.Rule.Destination, m.Payload, m.Err))
	}
	if want := []string{`exp_2 dst_b {"t":31} <nil>`, "exp_3 dst_c  <nil>"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("matches %q, want %q", got, want)
	}
	if set.MatchesTopic("a/1") {
		t.Error("the reused rule still matches its old filter a/#")
	}
}

// TestCompilerCompilesTextsOnce: rules of one list with the same condition
// and projection are compiled once, also the first time, and not again in
// the next list: a tenant's 100
// rules of one slow condition (one per destination) cost one compiling,
// not 100, when its rules are first compiled on a node.
func TestCompilerCompilesTextsOnce(t *testing.T) {
	var c dataout.Compiler
	const cond, proj = `payload.temp > 30`, `{"t": payload.temp}`
	rules, errs := c.Compile([]tenants.ExportRule{
		{ID: "exp_1", Filter: "a/#", Condition: cond, Projection: proj, Destination: "dst_a"},
		{ID: "exp_2", Filter: "b/#", Condition: cond, Projection: proj, Destination: "dst_b"},
	})
	if len(errs) != 0 || len(rules) != 2 {
		t.Fatalf("Compile: %d rules, errors %v", len(rules), errs)
	}
	if !dataout.SameCompiled(rules[0], rules[1]) {
		t.Error("the same condition and projection compiled twice in one list")
	}
	if rules[1].ID != "exp_2" || rules[1].Filter != "b/#" || rules[1].Destination != "dst_b" {
		t.Errorf("second rule %s %s %s, want exp_2 b/# dst_b", rules[1].ID, rules[1].Filter, rules[1].Destination)
	}
	// And again after a change elsewhere (TestCompilerReuses checks what
	// such a rule does, this that it was not compiled again).
	again, _ := c.Compile([]tenants.ExportRule{{ID: "exp_3", Filter: "c/#", Condition: cond, Projection: proj, Destination: "dst_c"}})
	if len(again) != 1 || !dataout.SameCompiled(rules[0], again[0]) {
		t.Error("the same condition and projection compiled again after a change of other fields")
	}
}
