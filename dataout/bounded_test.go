package dataout_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// amplifier is a payload from which a few operations make a lot: a 40 KB
// string and a list of 5,000 numbers (55 KB in all).
func amplifier(t *testing.T) dataout.Input {
	t.Helper()
	p, err := json.Marshal(map[string]any{"s": strings.Repeat("a", 40_000), "l": make([]int, 5_000)})
	if err != nil {
		t.Fatal(err)
	}
	return dataout.Input{Topic: "x", Payload: p}
}

// allocated is what fn allocated, in bytes.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestBuildersBounded: format, join and strings.quote fail before
// building a string past MaxStringResult (ext.Strings' own build it
// whole before the cost limit sees it: 1.5 GB for the format below), and
// work as before within it.
func TestBuildersBounded(t *testing.T) {
	in := amplifier(t)
	vars := []string{
		// Each element is the 40 KB string: 200 MB as text.
		`"%s".format([payload.l.map(x, payload.s)]) != ""`,
		`payload.l.map(x, payload.s).join("") != ""`,
		`payload.l.map(x, payload.s).join(",") != ""`,
		// 40 KB of %x is 80 KB; 26 of them pass the bound.
		`"%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x".format([payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s, payload.s]) != ""`,
	}
	for _, src := range vars {
		c, err := dataout.CompileCondition(src)
		if err != nil {
			t.Fatal(src, err)
		}
		// Not the time limit first: the list is made once, the call is
		// what must be refused.
		var ok bool
		grew := allocated(func() { ok, err = c.Eval(context.Background(), in) })
		if ok || err == nil || !strings.Contains(err.Error(), "more than") && !errors.Is(err, dataout.ErrTimeLimit) {
			t.Errorf("%s: %v, %v; want refused", src, ok, err)
		}
		if grew > 32<<20 {
			t.Errorf("%s: refusing it allocated %d MB", src, grew>>20)
		}
	}
	big := dataout.Input{Topic: "x", Payload: []byte(`{"s": "` + strings.Repeat("a", 200_000) + `"}`)}
	c, err := dataout.CompileCondition(`strings.quote(payload.s) != ""`)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Eval(context.Background(), big); ok || err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("quote of 200 KB: %v, %v; want refused", ok, err)
	}
	for _, src := range []string{
		`"%s-%d-%.2f".format(["a", 7, 1.5]) == "a-7-1.50"`,
		`"%s".format([[1, "b"]]) == "[1, b]"`,
		`"%x".format(["ab"]) == "6162"`,
		`["a", "b", "c"].join() == "abc"`,
		`["a", "b", "c"].join("-") == "a-b-c"`,
		`strings.quote("a\"b") == "\"a\\\"b\""`,
		`payload.s.size() == 40000 && "%s".format([payload.s]).size() == 40000`,
	} {
		c, err := dataout.CompileCondition(src)
		if err != nil {
			t.Fatal(src, err)
		}
		if ok, err := c.Eval(context.Background(), in); !ok || err != nil {
			t.Errorf("%s: %v, %v; want true", src, ok, err)
		}
	}
}

// TestEvalTimeLimit: what cel-go's cost limit lets through for too long
// (its tracker's work grows with the square of a list's length) stops at
// the time limit, for a condition, a projection and a rule set, whose
// rules share one limit per message.
func TestEvalTimeLimit(t *testing.T) {
	p, err := json.Marshal(map[string]any{"l": make([]int, 16_000)})
	if err != nil {
		t.Fatal(err)
	}
	long := dataout.Input{Topic: "x", Payload: p}
	for src, in := range map[string]dataout.Input{
		`payload.l.all(x, x == 0)`:    long,
		`payload.l.exists(x, x == 1)`: long,
	} {
		c, err := dataout.CompileCondition(src)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := c.Eval(context.Background(), in); ok || !errors.Is(err, dataout.ErrTimeLimit) {
			t.Errorf("%s: %v, %v; want ErrTimeLimit", src, ok, err)
		}
	}
	proj, err := dataout.CompileProjection(`{"n": payload.l.filter(x, x == 0).size()}`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proj.Eval(context.Background(), long); !errors.Is(err, dataout.ErrTimeLimit) {
		t.Errorf("projection: %v; want ErrTimeLimit", err)
	}
	rules := []tenants.ExportRule{
		{ID: "r1", Filter: "#", Condition: `payload.l.all(x, x == 0)`},
		{ID: "r2", Filter: "#", Condition: `payload.l.all(x, x == 0)`},
		{ID: "r3", Filter: "#"},
	}
	set, errs := dataout.CompileRules(rules)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	ms := set.Match(context.Background(), long)
	if len(ms) != 3 {
		t.Fatalf("matches %+v; want 3", ms)
	}
	for _, m := range ms[:2] {
		if !errors.Is(m.Err, dataout.ErrTimeLimit) {
			t.Errorf("rule %s: %v; want ErrTimeLimit", m.Rule.ID, m.Err)
		}
	}
	if ms[2].Err != nil {
		t.Errorf("a rule without a condition: %v", ms[2].Err)
	}
}

// TestBudget: a tenant's rules that overspend their share of the CPU
// make the next message wait until the share catches up; one that
// cannot wait so long fails with ErrBudget for the rules that evaluate,
// and a rule that evaluates nothing still matches.
func TestBudget(t *testing.T) {
	clock := time.Unix(1_000_000, 0)
	b := dataout.NewBudgetAt(func() time.Time { return clock })
	b.Spend(3 * time.Second) // 1 s of burst, 2 s of debt: 8 s at a quarter
	rules := []tenants.ExportRule{
		{ID: "cond", Filter: "#", Condition: `payload.temp > 30`},
		{ID: "plain", Filter: "#"},
	}
	set, errs := dataout.CompileRules(rules)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	set = set.WithBudget(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ms := set.Match(ctx, msg)
	if len(ms) != 2 || !errors.Is(ms[0].Err, dataout.ErrBudget) || ms[1].Err != nil || ms[1].Rule.ID != "plain" {
		t.Fatalf("over budget: %+v; want cond failing with ErrBudget and plain matching", ms)
	}
	clock = clock.Add(8 * time.Second)
	ms = set.Match(ctx, msg)
	if len(ms) != 2 || ms[0].Err != nil || ms[1].Err != nil {
		t.Fatalf("the share caught up: %+v; want both matching", ms)
	}
	// A short debt is waited out, not refused.
	clock = clock.Add(4 * time.Second) // the burst back
	b.Spend(1*time.Second + 50*time.Millisecond)
	start := time.Now()
	ms = set.Match(ctx, msg)
	if len(ms) != 2 || ms[0].Err != nil {
		t.Fatalf("a debt of 0.2 s with 1 s to wait: %+v; want matched", ms)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Errorf("waited %v for a debt of 0.2 s", waited)
	}
}

// TestMatchesPatternsLiteral: matches takes a string literal of at most
// MaxPattern bytes as its pattern, checked when the rule is made and
// pointing at the pattern: one from the message (20 KB of it over 20 KB
// of text took 1.1 s in one call, which no limit could stop) or a longer
// one is refused; a literal one matches as before.
func TestMatchesPatternsLiteral(t *testing.T) {
	long := `"` + strings.Repeat("(a|b)", dataout.MaxPattern/5+1) + `"`
	for src, col := range map[string]int{
		`payload.s.matches(payload.r)`:                                   26,
		`matches(payload.s, payload.r)`:                                  27,
		`topic.matches(metadata.re)`:                                     23,
		`payload.s.matches(` + long + `)`:                                19,
		`[1].all(x, topic.matches(topic))`:                               26,
		`payload.s.matches("` + strings.Repeat("[ab]{1000}", 24) + `c")`: 19,
		`{"m": payload.s.matches(topic)}`:                                25,
	} {
		var err error
		if strings.HasPrefix(src, "{") {
			_, err = dataout.CompileProjection(src)
		} else {
			_, err = dataout.CompileCondition(src)
		}
		var ce *dataout.ConditionError
		if !errors.As(err, &ce) || ce.Line != 1 || ce.Column != col || !strings.Contains(ce.Msg, "matches") {
			t.Errorf("%.60s: %v; want a problem at column %d about matches", src, err, col)
		}
	}
	c, err := dataout.CompileCondition(`topic.matches("^sites/[a-z]+/temp$") && !topic.matches("x")`)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Eval(context.Background(), dataout.Input{Topic: "sites/lab/temp"}); !ok || err != nil {
		t.Errorf("a literal pattern: %v, %v; want true", ok, err)
	}
}

// TestBuiltBounded: the strings a message's rules make with calls in a
// comprehension's steps (which cel-go's cost limit does not charge) fail
// the rule once they pass MaxBuilt together, with little memory,
// whichever call makes them; once past it, such calls fail before
// building, though an || absorbs their error; the count is the message's,
// shared by its rules. Calls outside comprehensions, and calls inside
// them that build nothing, are not charged: ten rules converting a 2 MiB
// text payload all match.
func TestBuiltBounded(t *testing.T) {
	const bound = 1 << 20
	dataout.LowerMaxBuilt(t, bound)
	dataout.RaiseEvalTimeLimit(t, 10*time.Second)
	// The bound in 5 concatenations; a list of 50, for cel-go's cost
	// tracker makes a comprehension's time grow with the square of its
	// list's length (1,000 numbers take 20 ms, more under -race).
	p, err := json.Marshal(map[string]any{"s": strings.Repeat("a", 120_000), "l": make([]int, 50)})
	if err != nil {
		t.Fatal(err)
	}
	in := dataout.Input{Topic: "x", Payload: p}
	for _, src := range []string{
		`payload.l.map(x, payload.s + payload.s).size() > 0`,
		`payload.l.map(x, bytes(payload.s)).size() > 0`,
		`payload.l.filter(x, (payload.s + string(x)).size() > 0).size() > 0`,
		`payload.l.map(x, payload.s.lowerAscii()).size() > 0`,
	} {
		c, err := dataout.CompileCondition(src)
		if err != nil {
			t.Fatal(src, err)
		}
		ok, err := c.Eval(context.Background(), in)
		// The cost limit charges some of these calls by size too, and
		// may meet them first; the plain concatenation it does not.
		if ok || err == nil || !strings.Contains(err.Error(), "bytes of strings") && !(errors.Is(err, dataout.ErrCostLimit) && !strings.Contains(src, "payload.s + payload.s")) {
			t.Errorf("%s: %v, %v; want refused past MaxBuilt", src, ok, err)
		}
	}

	absorbed, err := dataout.CompileCondition(`payload.l.all(x, (payload.s + payload.s).size() == 0 || true)`)
	if err != nil {
		t.Fatal(err)
	}
	p, err = json.Marshal(map[string]any{"s": strings.Repeat("a", 120_000), "l": make([]int, 200)})
	if err != nil {
		t.Fatal(err)
	}
	// Building on, it would make 200 × 240 KB: 48 MB.
	grew := allocated(func() { absorbed.Eval(context.Background(), dataout.Input{Topic: "x", Payload: p}) })
	if grew > 8*bound {
		t.Errorf("an error absorbed by ||: the comprehension built on, %d KB allocated", grew>>10)
	}

	for _, src := range []string{
		`payload.l.map(x, dyn(payload.s)).size() == 50`,
		`payload.l.map(x, string(payload.s)).size() == 50`,
		`(payload.s + payload.s + payload.s + payload.s + payload.s + payload.s + payload.s + payload.s + payload.s + payload.s).size() > 0`,
	} {
		c, err := dataout.CompileCondition(src)
		if err != nil {
			t.Fatal(src, err)
		}
		if ok, err := c.Eval(context.Background(), in); !ok || err != nil && !errors.Is(err, dataout.ErrCostLimit) {
			t.Errorf("%s: %v, %v; want true (nothing built in a comprehension)", src, ok, err)
		}
	}

	text := dataout.Input{Topic: "x", Payload: []byte(strings.Repeat("x", 2<<20))}
	var textRules []tenants.ExportRule
	for i := range 10 {
		textRules = append(textRules, tenants.ExportRule{ID: fmt.Sprintf("r%d", i), Filter: "#", Condition: `string(payload).startsWith("x")`})
	}
	set, errs := dataout.CompileRules(textRules)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	for _, m := range set.Match(context.Background(), text) {
		if m.Err != nil {
			t.Errorf("rule %s over a 2 MiB text payload: %v, want a match", m.Rule.ID, m.Err)
		}
	}

	p, err = json.Marshal(map[string]any{"s": strings.Repeat("a", 120_000), "l": make([]int, 3)})
	if err != nil {
		t.Fatal(err)
	}
	most := dataout.Input{Topic: "x", Payload: p} // 3 × 240 KB: 720 KB a rule
	const cond = `payload.l.map(x, payload.s + payload.s).size() == 3`
	c, err := dataout.CompileCondition(cond)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Eval(context.Background(), most); !ok || err != nil {
		t.Fatalf("one rule making 720 KB: %v, %v; want true", ok, err)
	}
	set, errs = dataout.CompileRules([]tenants.ExportRule{
		{ID: "r1", Filter: "#", Condition: cond},
		{ID: "r2", Filter: "#", Condition: cond},
	})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	ms := set.Match(context.Background(), most)
	if len(ms) != 2 || ms[0].Err != nil || ms[1].Err == nil || !strings.Contains(ms[1].Err.Error(), "bytes of strings") {
		t.Errorf("two rules making 720 KB each for one message: matches %+v; want r1, and r2 past the message's MaxBuilt", ms)
	}
	for _, src := range []string{
		`(payload.s + "x").size() == 120001`,
		`topic + "/" + device == "x/"`,
		`string(qos) + "a" == "0a"`,
	} {
		c, err := dataout.CompileCondition(src)
		if err != nil {
			t.Fatal(src, err)
		}
		if ok, err := c.Eval(context.Background(), in); !ok || err != nil {
			t.Errorf("%s: %v, %v; want true", src, ok, err)
		}
	}
}
