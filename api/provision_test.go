package api_test

import "testing"

// TestCAProvisioningAPI: an admin marks a CA for provisioning with a
// template and unmarks it; a viewer cannot; a bad template is a 400 naming
// the field; the CA list shows the template.
func TestCAProvisioningAPI(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	r := e.do("POST", "/v1/tenants/acme/cas", u.token, map[string]string{"certificate": testCA})
	want(t, r, 201, "register a CA")
	if r.json()["provisioning"] != nil {
		t.Errorf("a new CA provisions: %s", r.body)
	}
	path := "/v1/tenants/acme/cas/" + r.str("id")
	tpl := map[string]any{"provisioning": map[string]any{"groups": []string{"fleet"}, "metadata": map[string]string{"model": "m1"}}}
	_, viewer := e.mustKey(u.token, "acme", "viewer")
	wantProblem(t, e.do("PATCH", path, viewer, tpl), 403, "forbidden", "", "a viewer marks a CA")
	wantProblem(t, e.do("PATCH", path, u.token, map[string]any{"provisioning": map[string]any{"groups": []string{"Bad/Group"}}}), 400, "invalid", "provisioning.groups", "a bad template")
	wantProblem(t, e.do("PATCH", path, u.token, map[string]any{"provisioning": map[string]any{"client_ids": "some"}}), 400, "invalid", "provisioning.client_ids", "a bad client_ids")
	wantProblem(t, e.do("PATCH", "/v1/tenants/acme/cas/ca_nope", u.token, tpl), 404, "not_found", "", "no such CA")
	r = e.do("PATCH", path, u.token, tpl)
	want(t, r, 200, "mark")
	p, _ := r.json()["provisioning"].(map[string]any)
	if p == nil || p["client_ids"] != "exact" || len(asSlice(p["groups"])) != 1 {
		t.Errorf("marked: %s", r.body)
	}
	list := e.do("GET", "/v1/tenants/acme/cas", u.token, nil)
	if it := asSlice(list.json()["items"]); len(it) != 1 || it[0].(map[string]any)["provisioning"] == nil {
		t.Errorf("CA list after marking: %s", list.body)
	}
	r = e.do("PATCH", path, u.token, map[string]any{"provisioning": nil})
	want(t, r, 200, "unmark")
	if r.json()["provisioning"] != nil {
		t.Errorf("unmarked: %s", r.body)
	}
}
