package auth_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// TestAddressBudgetsPerNetwork: each address budget counts an IPv6 caller
// by its /64, as the MQTT ingress does: attempts from different addresses
// of one /64 spend one budget, and another /64 has its own. An
// IPv4-mapped IPv6 address is its IPv4 address. (Counted per address, a
// host could spend a fresh budget from each of the 2^64 in its /64.)
func TestAddressBudgetsPerNetwork(t *testing.T) {
	ctx := context.Background()
	type attempt func(svc *auth.Service, op *auth.Operator, i int, addr string) error
	tests := []struct {
		name string
		// free is how many attempts from one address pass before one waits.
		free int
		// try is attempt i from addr; refused (try if nil) is the one
		// expected to wait, a 429 problem.
		try, refused attempt
	}{
		{"login-address", 20,
			// A wrong verify token is a failed login of the address (the
			// budget a wrong password spends), without the password hash
			// that would make this test take a minute under -race.
			func(svc *auth.Service, _ *auth.Operator, i int, addr string) error {
				_, err := svc.VerifyEmail(ctx, auth.Verification{Token: fmt.Sprintf("not-a-token-%d", i)}, addr)
				return err
			},
			// A login waits alike, answered before its hash; each for an
			// email of its own, so that only the address's budget binds.
			func(svc *auth.Service, _ *auth.Operator, i int, addr string) error {
				_, err := svc.LogIn(ctx, fmt.Sprintf("nobody%d@example.com", i), "wrong password", addr)
				return err
			}},
		{"signup-address", 30, func(svc *auth.Service, _ *auth.Operator, i int, addr string) error {
			// A sign-up refused for its input counts too, before any hash.
			_, err := svc.SignUp(ctx, tenants.Signup{Email: fmt.Sprintf("not an email %d", i), Password: "correct horse battery"}, addr)
			return err
		}, nil},
		{"forgot-address", 20, func(svc *auth.Service, _ *auth.Operator, i int, addr string) error {
			return svc.ForgotPassword(ctx, fmt.Sprintf("someone%d@example.com", i), addr)
		}, nil},
		{"operator-address", 10, func(_ *auth.Service, op *auth.Operator, i int, addr string) error {
			return op.Check(fmt.Sprintf("rop_guess-%d-0123456789", i), addr)
		}, nil},
	}
	waits := func(err error) bool { return problem.Of(err).Status == http.StatusTooManyRequests }
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := testenv.NewClock(time.Now())
			svc, _ := newService(t, "", clk, nil)
			op := auth.NewOperator(operatorToken, clk.Now, nil)
			refused := tc.refused
			if refused == nil {
				refused = tc.try
			}
			// Every attempt from another address of 2001:db8:1:2::/64.
			for i := range tc.free {
				addr := fmt.Sprintf("2001:db8:1:2:%x:%x::%x", i, i*7, i+1)
				if err := tc.try(svc, op, i, addr); waits(err) {
					t.Fatalf("attempt %d of %d, from %s: got a wait (%v), want it evaluated", i+1, tc.free, addr, err)
				}
			}
			if err := refused(svc, op, tc.free, "2001:db8:1:2:ffff:ffff:ffff:ffff"); !waits(err) {
				t.Errorf("attempt %d, from a new address of the same /64: got %v, want a 429", tc.free+1, err)
			}
			if err := tc.try(svc, op, tc.free+1, "2001:db8:1:3::1"); waits(err) {
				t.Errorf("an attempt from the next /64: got a wait (%v), want it evaluated", err)
			}
			// An IPv4-mapped address spends its IPv4 address's budget.
			for i := range tc.free {
				if err := tc.try(svc, op, 100+i, "::ffff:192.0.2.1"); waits(err) {
					t.Fatalf("attempt %d from ::ffff:192.0.2.1: got a wait (%v), want it evaluated", i+1, err)
				}
			}
			if err := refused(svc, op, 200, "192.0.2.1"); !waits(err) {
				t.Errorf("192.0.2.1 after its budget was spent as ::ffff:192.0.2.1: got %v, want a 429", err)
			}
			if err := tc.try(svc, op, 201, "192.0.2.2"); waits(err) {
				t.Errorf("another IPv4 address: got a wait (%v), want it evaluated", err)
			}
		})
	}
}
