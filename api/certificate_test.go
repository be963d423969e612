package api_test

import "testing"

// TestCAInUse: a CA belongs to the one tenant that registered it; another
// tenant registering the same certificate gets 409 ca_in_use, and may once
// the first deleted it.
func TestCAInUse(t *testing.T) {
	e := newEnv(t)
	alice, bob := e.signup("alice"), e.signup("bob")
	e.mustTenant(alice, "tenant-a")
	e.mustTenant(bob, "tenant-b")
	r := e.do("POST", "/v1/tenants/tenant-a/cas", alice.token, map[string]string{"certificate": testCA})
	want(t, r, 201, "register a CA")
	caID := r.str("id")
	wantProblem(t, e.do("POST", "/v1/tenants/tenant-b/cas", bob.token, map[string]string{"certificate": testCA}), 409, "ca_in_use", "", "another tenant's CA")
	wantProblem(t, e.do("POST", "/v1/tenants/tenant-a/cas", alice.token, map[string]string{"certificate": testCA}), 409, "conflict", "", "the same CA twice")
	want(t, e.do("DELETE", "/v1/tenants/tenant-a/cas/"+caID, alice.token, nil), 204, "delete the CA")
	want(t, e.do("POST", "/v1/tenants/tenant-b/cas", bob.token, map[string]string{"certificate": testCA}), 201, "register the CA once free")
}
