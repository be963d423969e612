package dataout_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// TestProjection: a projection's value, as JSON, over every variable a
// condition sees; what JSON cannot carry fails with a reason.
func TestProjection(t *testing.T) {
	for _, tc := range []struct {
		src  string
		in   dataout.Input
		want string
	}{
		{`{"t": payload.temp, "device": device, "room": metadata.room}`, msg, `{"device":"sensor-1","room":"lab","t":31.5}`},
		{`{"site": topic_levels[1], "qos": qos, "client": client_id, "at": time}`, msg, `{"at":"2026-12-03T12:00:00Z","client":"sensor-1-c","qos":1,"site":"lab"}`},
		{`payload.tags`, msg, `["a","b"]`},
		{`payload.temp * 9.0 / 5.0 + 32.0`, msg, `88.7`},
		{`"on"`, msg, `"on"`},
		{`payload`, dataout.Input{Topic: "x", Payload: []byte("raw")}, `"cmF3"`}, // bytes: base64
		{`{"text": string(payload)}`, dataout.Input{Topic: "x", Payload: []byte("raw")}, `{"text":"raw"}`},
		{`has(payload.unit) ? payload.unit : "?"`, msg, `"C"`},
		{`null`, msg, `null`},
	} {
		p, err := dataout.CompileProjection(tc.src)
		if err != nil {
			t.Errorf("%s: %v", tc.src, err)
			continue
		}
		got, err := p.Eval(context.Background(), tc.in)
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: %s, %v; want %s", tc.src, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ src, want string }{
		{`payload.missing`, "no such key"},
		{`{1: payload.temp}`, "not JSON"},
	} {
		p, err := dataout.CompileProjection(tc.src)
		if err != nil {
			if strings.Contains(err.Error(), tc.want) || tc.want == "not JSON" && strings.Contains(err.Error(), "string keys") {
				continue
			}
			t.Errorf("%s: compile: %v", tc.src, err)
			continue
		}
		if got, err := p.Eval(context.Background(), msg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %s, %v; want an error saying %q", tc.src, got, err, tc.want)
		}
	}
	big := dataout.Input{Topic: "x", Payload: []byte(`{"big": "` + strings.Repeat("x", dataout.MaxProjected) + `"}`)}
	p, _ := dataout.CompileProjection(`{"copy": payload.big, "again": payload.big}`)
	if got, err := p.Eval(context.Background(), big); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("a projection past MaxProjected: %d bytes, %v", len(got), err)
	}
	// A small message is not made a large one: doubled eight times, its
	// text passes the floor and twice its size.
	grow, _ := dataout.CompileProjection(`[payload.s + payload.s + payload.s + payload.s, payload.s + payload.s + payload.s + payload.s,
		payload.s + payload.s + payload.s + payload.s, payload.s + payload.s + payload.s + payload.s]`)
	small := dataout.Input{Topic: "x", Payload: []byte(`{"s": "` + strings.Repeat("y", 300) + `"}`)}
	if got, err := grow.Eval(context.Background(), small); err == nil || !strings.Contains(err.Error(), "more than 4714") {
		t.Errorf("a 310-byte message made %d bytes, %v; want refused past 4 KiB and twice its size", len(got), err)
	}
	small.Payload = []byte(`{"s": "` + strings.Repeat("y", 100) + `"}`)
	if got, err := grow.Eval(context.Background(), small); err != nil || len(got) < 1600 {
		t.Errorf("a 110-byte message made %d bytes, %v; want them, under the floor", len(got), err)
	}
	// Shared parts (a list of many references to the payload costs CEL
	// little) are not built past the limit: the writer stops there.
	many, err := dataout.CompileProjection(`[0,1,2,3,4,5,6,7,8,9].map(a, [0,1,2,3,4,5,6,7,8,9].map(b, [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29].map(c, payload.s)))`)
	if err != nil {
		t.Fatal(err)
	}
	wide := dataout.Input{Topic: "x", Payload: []byte(`{"s": "` + strings.Repeat("z", 60_000) + `"}`)}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	got, err := many.Eval(context.Background(), wide)
	runtime.ReadMemStats(&after)
	// Refused at the size limit, or, under -race on a busy machine, at
	// the time limit first: either way, not built.
	if err == nil || !strings.Contains(err.Error(), "more than 124114") && !errors.Is(err, dataout.ErrTimeLimit) {
		t.Errorf("3,000 copies of a 60 kB payload: %d bytes, %v; want refused at the limit", len(got), err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 20<<20 {
		t.Errorf("refusing 3,000 copies of a 60 kB payload allocated %d MB: the value was built past the limit", grew>>20)
	}
	for _, tc := range []struct{ src, want string }{
		{`9223372036854775807`, `9223372036854775807`},
		{`18446744073709551615u`, `18446744073709551615`},
		{`duration("1h")`, `"3600s"`},
		{`{"b": b"hi", "n": null, "ok": true}`, `{"b":"aGk=","n":null,"ok":true}`},
	} {
		p, err := dataout.CompileProjection(tc.src)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := p.Eval(context.Background(), msg); err != nil || string(got) != tc.want {
			t.Errorf("%s: %s, %v; want %s", tc.src, got, err, tc.want)
		}
	}
	for _, src := range []string{`payload.temp / 0.0`, `{"x": [double("NaN")]}`, `int`, `{dyn(1): 2}`} {
		p, err := dataout.CompileProjection(src)
		if err != nil {
			continue // refused when compiled: as good
		}
		if got, err := p.Eval(context.Background(), msg); err == nil {
			t.Errorf("%s: %s, want an error (not JSON)", src, got)
		}
	}
	if dataout.ProjectedLimit(0) != dataout.ProjectedFloor || dataout.ProjectedLimit(1<<20) != dataout.MaxProjected {
		t.Errorf("ProjectedLimit: %d, %d", dataout.ProjectedLimit(0), dataout.ProjectedLimit(1<<20))
	}
}

// TestProjectionErrorsPoint: a projection that does not compile says
// where, as a condition does.
func TestProjectionErrorsPoint(t *testing.T) {
	for _, tc := range []struct {
		src          string
		line, column int
	}{
		{``, 1, 1},
		{`{"t": payload.temp,`, 1, 20},
		{`{"t": nosuch}`, 1, 7},
		{"{\n  \"t\": payload.temp +\n}", 3, 1},
		{`{1: "x"}`, 1, 1},
	} {
		_, err := dataout.CompileProjection(tc.src)
		var ce *dataout.ConditionError
		if !errors.As(err, &ce) || ce.Line != tc.line || ce.Column != tc.column {
			t.Errorf("%q: %v; want line %d, column %d", tc.src, err, tc.line, tc.column)
		}
	}
}

// TestRuleSetProjects: a matching rule's projection is its Match's
// payload; a rule without one leaves the payload nil (the message's); a
// projection that fails is the match's error, not a match.
func TestRuleSetProjects(t *testing.T) {
	set, errs := dataout.CompileRules([]tenants.ExportRule{
		{ID: "plain", Filter: "sites/#"},
		{ID: "shaped", Filter: "sites/#", Condition: "payload.temp > 30", Projection: `{"t": payload.temp}`},
		{ID: "broken", Filter: "sites/#", Projection: `payload.missing`},
		{ID: "false", Filter: "sites/#", Condition: "payload.temp < 0", Projection: `payload.missing`},
	})
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	got := set.Match(context.Background(), msg)
	if len(got) != 3 {
		t.Fatalf("matches %+v, want plain, shaped and broken's error", got)
	}
	if got[0].Rule.ID != "plain" || got[0].Payload != nil || got[0].Err != nil {
		t.Errorf("plain: %+v", got[0])
	}
	if got[1].Rule.ID != "shaped" || string(got[1].Payload) != `{"t":31.5}` || got[1].Err != nil {
		t.Errorf("shaped: %+v", got[1])
	}
	if got[2].Rule.ID != "broken" || got[2].Err == nil || !strings.HasPrefix(got[2].Err.Error(), "projection: ") {
		t.Errorf("broken: %+v", got[2])
	}
	r, err := dataout.CompileRule(tenants.ExportRule{Filter: "#", Projection: "{"})
	var re *dataout.RuleError
	if !errors.As(err, &re) || re.Field != "projection" || r != nil {
		t.Errorf("a projection that does not compile: %v, want a RuleError for projection", err)
	}
	shaped, err := dataout.CompileRule(tenants.ExportRule{Filter: "sites/#", Projection: `{"t": payload.temp}`})
	if err != nil {
		t.Fatal(err)
	}
	if ok, payload, err := shaped.Apply(context.Background(), msg); !ok || string(payload) != `{"t":31.5}` || err != nil {
		t.Errorf("Apply: %v %s %v", ok, payload, err)
	}
	if ok, _, err := shaped.Apply(context.Background(), dataout.Input{Topic: "elsewhere"}); ok || err != nil {
		t.Errorf("Apply to another topic: %v %v", ok, err)
	}
}
