package storetest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/roosthub/roost/tenants"
)

// testImportDevices: all-or-nothing refuses the whole import for one bad
// row or a count over max_devices; per row creates the good rows while the
// quota allows and reports the others by row number; the secrets work.
func testImportDevices(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "importer@example.com")
	mustTenant(t, s, owner, "importer")
	mustTenant(t, s, owner, "bystander")
	mustDevice(t, s, "importer", "old")
	row := func(n int, name string, groups ...string) tenants.ImportRow {
		return tenants.ImportRow{Row: n, Input: tenants.DeviceInput{Name: name, Groups: groups, Metadata: map[string]string{"row": fmt.Sprint(n)}}}
	}
	rows := []tenants.ImportRow{
		row(2, "n1", "lab"),
		row(3, "bad name"),
		row(4, "n2"),
		row(5, "n1"),
		row(6, "old"),
		row(7, "n3", "Bad"),
		{Row: 8, Err: &tenants.FieldError{Field: "metadata.x", Message: "unreadable"}},
		row(9, "n4"),
	}
	count := func(tenant string) int64 {
		t.Helper()
		n, err := s.DeviceCount(ctx, tenant)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	res, err := s.ImportDevices(ctx, "importer", rows, tenants.ImportAll)
	if err != nil {
		t.Fatal(err)
	}
	wantRows := func(what string, got []tenants.ImportError, want ...int) {
		t.Helper()
		var rs []int
		for _, e := range got {
			rs = append(rs, e.Row)
		}
		if fmt.Sprint(rs) != fmt.Sprint(want) {
			t.Errorf("%s: rows in error %v, want %v (%+v)", what, rs, want, got)
		}
	}
	wantRows("all mode, checked before the database", res.Errors, 3, 5, 7, 8)
	if len(res.Created) != 0 || count("importer") != 1 {
		t.Errorf("all mode with errors created %d (count %d), want none", len(res.Created), count("importer"))
	}
	// Without the rows bad on their own, the existing name refuses all.
	res, err = s.ImportDevices(ctx, "importer", []tenants.ImportRow{row(2, "n1"), row(3, "old"), row(4, "n2")}, tenants.ImportAll)
	if err != nil {
		t.Fatal(err)
	}
	wantRows("all mode, an existing name", res.Errors, 3)
	if res.Errors[0].Code != "conflict" || len(res.Created) != 0 || count("importer") != 1 {
		t.Errorf("all mode with an existing name: %+v, count %d", res, count("importer"))
	}

	res, err = s.ImportDevices(ctx, "importer", rows, tenants.ImportRows)
	if err != nil {
		t.Fatal(err)
	}
	wantRows("rows mode", res.Errors, 3, 5, 6, 7, 8)
	if len(res.Created) != 3 || res.Created[0].Row != 2 || res.Created[0].Device.Name != "n1" || res.Created[2].Row != 9 {
		t.Fatalf("rows mode created %+v, want rows 2, 4, 9", res.Created)
	}
	if n := count("importer"); n != 4 {
		t.Errorf("devices after rows mode: %d, want 4", n)
	}
	if reopen != nil {
		s = reopen()
	}
	d, err := s.Device(ctx, "importer", "n1")
	if err != nil || len(d.Groups) != 1 || d.Groups[0] != "lab" || d.Metadata["row"] != "2" {
		t.Errorf("imported n1: %+v (%v)", d, err)
	}
	if len(res.Created[0].Secret) < 20 || res.Created[0].Device.SecretHash != d.SecretHash {
		t.Error("the imported device's secret is not the one stored")
	}

	// max_devices: 6. Four exist; three more are one too many.
	limit := int64(6)
	if _, err := s.AdminUpdateTenant(ctx, "importer", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_devices": &limit}}); err != nil {
		t.Fatal(err)
	}
	more := []tenants.ImportRow{row(2, "q1"), row(3, "q2"), row(4, "q3")}
	_, err = s.ImportDevices(ctx, "importer", more, tenants.ImportAll)
	var qe *tenants.QuotaError
	if !errors.As(err, &qe) || qe.Quota != "max_devices" || count("importer") != 4 {
		t.Fatalf("all mode over max_devices: got %v (count %d), want a QuotaError and nothing created", err, count("importer"))
	}
	res, err = s.ImportDevices(ctx, "importer", more, tenants.ImportRows)
	if err != nil {
		t.Fatal(err)
	}
	wantRows("rows mode over max_devices", res.Errors, 4)
	if len(res.Created) != 2 || res.Errors[0].Code != "quota_exceeded" || count("importer") != 6 {
		t.Errorf("rows mode over max_devices: created %d, errors %+v, count %d", len(res.Created), res.Errors, count("importer"))
	}
	if count("bystander") != 0 {
		t.Error("another tenant got devices")
	}
	_, err = s.ImportDevices(ctx, "importer", nil, "some")
	wantField(t, "an unknown mode", err, "mode")
	_, err = s.ImportDevices(ctx, "importer", make([]tenants.ImportRow, tenants.MaxImportRows+1), tenants.ImportRows)
	wantField(t, "too many rows", err, "rows")
	_, err = s.ImportDevices(ctx, "nobody", []tenants.ImportRow{row(2, "x")}, tenants.ImportRows)
	wantErr(t, "import into no tenant", err, tenants.ErrNotFound)
}
