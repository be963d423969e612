package dataout_test

import (
	"context"
	"errors"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/roosthub/roost/dataout"
)

// FuzzCondition: any text a tenant sends as a condition compiles or is a
// ConditionError pointing into it, and a compiled one evaluates within
// the cost limit, without panicking.
func FuzzCondition(f *testing.F) {
	for _, s := range []string{`payload.temp > 30`, `topic_levels[1] == "lab"`, `[1,2].all(x, x > 0)`, `string(payload).contains("a")`,
		`metadata.room == "lab" && time.getHours() > 3`, `payload.temp >`, `"a" * 3`, `size(payload) > 2`} {
		f.Add(s, []byte(`{"temp": 31.5}`))
	}
	f.Fuzz(func(t *testing.T, src string, payload []byte) {
		c, err := dataout.CompileCondition(src)
		if err != nil {
			var ce *dataout.ConditionError
			if !asConditionError(err, &ce) || ce.Line < 1 || ce.Column < 1 {
				t.Fatalf("%q: error %v without a position", src, err)
			}
			return
		}
		in := msg
		in.Payload = payload
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.Eval(ctx, in)
	})
}

// FuzzCheckURL: whatever URL is accepted has no refused literal address
// as its host.
func FuzzCheckURL(f *testing.F) {
	for _, s := range []string{"https://hooks.example.com/x", "https://127.0.0.1/", "https://[::ffff:10.0.0.1]/", "https://[fe80::1%25eth0]/", "https://0x7f.1/"} {
		f.Add(s)
	}
	g, _ := dataout.NewGuard("", false)
	f.Fuzz(func(t *testing.T, raw string) {
		if g.CheckURL(raw) != nil {
			return
		}
		u := mustParse(raw)
		if a, err := netip.ParseAddr(u); err == nil && dataout.Refused(a) {
			t.Fatalf("%q accepted with a refused address", raw)
		}
	})
}

func asConditionError(err error, target **dataout.ConditionError) bool {
	return errors.As(err, target)
}

func mustParse(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Hostname()
}
