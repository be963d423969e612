package tenants

import (
	"context"
	"database/sql"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/roosthub/roost/migrations"
)

// MaxImportRows bounds one bulk import.
const MaxImportRows = 10000

// ImportMode says what an import does with rows in error.
type ImportMode string

// The modes: ImportAll creates every row or none; ImportRows creates the
// rows without errors and reports the others.
const (
	ImportAll  ImportMode = "all"
	ImportRows ImportMode = "rows"
)

// ImportRow is one device to import: Row is its number in the file (for
// the errors), Err an error met reading it. Certificate (a PEM
// certificate to pin to the device) and PublicKey (a PEM public key its
// tokens are signed with) are optional, and checked as POST
// …/devices/{device}/certificates and …/keys check them.
type ImportRow struct {
	Row         int
	Input       DeviceInput
	Certificate string
	PublicKey   string
	Err         error
}

// ImportError is what is wrong with one row.
type ImportError struct {
	Row     int    `json:"row"`
	Field   string `json:"field,omitempty"`
	Code    string `json:"code"`
	Message string `json:"message"`
	// Name is the device name the row gave, if any, and Username the
	// username of the device already registered under it (a conflict):
	// the CSV answer's name and username columns, so that its error
	// lines say which device they are about.
	Name     string `json:"-"`
	Username string `json:"-"`
}

// ImportedDevice is a device an import created, with its secret, which is
// not stored and cannot be read again.
type ImportedDevice struct {
	Row    int    `json:"row"`
	Device Device `json:"device"`
	Secret string `json:"secret"`
	// Certificate and Key are what the row pinned and registered, if it
	// had them.
	Certificate *DeviceCertificate `json:"certificate,omitempty"`
	Key         *DeviceKey         `json:"key,omitempty"`
}

// ImportResult is what an import did. In ImportAll mode with errors,
// nothing was created.
type ImportResult struct {
	Mode    ImportMode       `json:"mode"`
	Rows    int              `json:"rows"`
	Created []ImportedDevice `json:"created"`
	Errors  []ImportError    `json:"errors"`
}

// WriteCSV writes the result as the file the API and the console answer
// with: a line per row of the request, in row order, created (with its
// username and secret) or not (with its error).
func (r ImportResult) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"row", "name", "username", "secret", "error"})
	created, errs := r.Created, r.Errors
	for len(created) > 0 || len(errs) > 0 {
		if len(errs) == 0 || (len(created) > 0 && created[0].Row < errs[0].Row) {
			d := created[0]
			cw.Write([]string{strconv.Itoa(d.Row), d.Device.Name, d.Device.Username, d.Secret, ""})
			created = created[1:]
			continue
		}
		e := errs[0]
		msg := e.Message
		if e.Field != "" {
			msg = e.Field + ": " + msg
		}
		cw.Write([]string{strconv.Itoa(e.Row), e.Name, e.Username, "", msg})
		errs = errs[1:]
	}
	cw.Flush()
	return cw.Error()
}

func rowError(row int, err error) ImportError {
	e := ImportError{Row: row, Code: "invalid", Message: err.Error()}
	var fe *FieldError
	if errors.As(err, &fe) {
		e.Field, e.Message = fe.Field, fe.Message
	}
	return e
}

// ImportDevices registers many devices in one transaction, within the
// tenant's max_devices: in ImportAll mode a row in error (or a count over
// the quota, a *QuotaError) creates nothing; in ImportRows mode each good
// row is created while the quota allows. Every device created has a new
// secret, returned once.
func (s *Store) ImportDevices(ctx context.Context, tenant string, rows []ImportRow, mode ImportMode) (ImportResult, error) {
	res := ImportResult{Mode: mode, Rows: len(rows), Created: []ImportedDevice{}, Errors: []ImportError{}}
	if mode != ImportAll && mode != ImportRows {
		return res, invalid("mode", "must be all or rows")
	}
	if len(rows) > MaxImportRows {
		return res, invalid("rows", "at most %d devices in one import", MaxImportRows)
	}
	seen := make(map[string]int, len(rows))
	good := make([]ImportRow, 0, len(rows))
	creds := make(map[int]importCredentials)
	for _, r := range rows {
		err := r.Err
		if err == nil {
			err = r.Input.Validate()
		}
		if err == nil {
			if first, dup := seen[r.Input.Name]; dup {
				err = invalid("name", "repeats the device of row %d", first)
			}
		}
		var c importCredentials
		if err == nil {
			c, err = parseImportCredentials(r)
		}
		if err != nil {
			e := rowError(r.Row, err)
			e.Name = r.Input.Name
			res.Errors = append(res.Errors, e)
			continue
		}
		seen[r.Input.Name] = r.Row
		good = append(good, r)
		if c.cert != nil || c.key != nil {
			creds[r.Row] = c
		}
	}
	if mode == ImportAll && len(res.Errors) > 0 {
		return res, nil
	}
	now := s.timestamp()
	var created []ImportedDevice
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		created = nil
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return err
		}
		t, err := s.scanTenant(tx.QueryRowContext(ctx, `SELECT `+tenantColumns+` FROM tenants t WHERE t.slug = $1`, tenant))
		if err != nil {
			return err
		}
		existing, err := deviceNames(ctx, tx, tenant)
		if err != nil {
			return err
		}
		var errs []ImportError
		fresh := good[:0:0]
		for _, r := range good {
			if existing[r.Input.Name] {
				errs = append(errs, ImportError{Row: r.Row, Field: "name", Code: "conflict", Message: "a device with this name exists",
					Name: r.Input.Name, Username: Username(tenant, r.Input.Name)})
				continue
			}
			fresh = append(fresh, r)
		}
		limit := t.Quotas().MaxDevices
		room := max(limit-int64(len(existing)), 0)
		if mode == ImportAll {
			if len(errs) > 0 {
				res.Errors = errs
				return errImportRefused
			}
			if int64(len(fresh)) > room {
				return &QuotaError{Quota: "max_devices", Limit: limit}
			}
		} else if int64(len(fresh)) > room {
			for _, r := range fresh[room:] {
				errs = append(errs, ImportError{Row: r.Row, Code: "quota_exceeded", Name: r.Input.Name,
					Message: fmt.Sprintf("the tenant has its %d devices (max_devices)", limit)})
			}
			fresh = fresh[:room]
		}
		res.Errors = append(res.Errors, errs...)
		created = make([]ImportedDevice, 0, len(fresh))
		for _, r := range fresh {
			secret := newSecret(24)
			in := r.Input
			d := ImportedDevice{Row: r.Row, Secret: secret, Device: Device{
				Tenant: tenant, Name: in.Name, Username: Username(tenant, in.Name), Enabled: *in.Enabled, ClientIDs: in.ClientIDs,
				Metadata: in.Metadata, Groups: in.Groups, CreatedAt: now, UpdatedAt: now, SecretHash: hashSecret(secret),
			}}
			if c, ok := creds[r.Row]; ok {
				if c.cert != nil {
					dc := *c.cert
					dc.ID, dc.Device, dc.CreatedAt = newID("dc_"), in.Name, now
					d.Certificate = &dc
				}
				if c.key != nil {
					k := *c.key
					k.ID, k.Device, k.CreatedAt = newID("dk_"), in.Name, now
					d.Key = &k
				}
			}
			created = append(created, d)
		}
		if err := s.insertDevices(ctx, tx, created); err != nil {
			return err
		}
		if err := s.insertImportCredentials(ctx, tx, tenant, created); err != nil {
			return err
		}
		if len(created) == 0 {
			return nil
		}
		return s.audit(ctx, tx, tenant, "device.import", "devices:"+strconv.Itoa(len(created)))
	}, Change{Kind: DevicesImported, Tenant: tenant})
	if errors.Is(err, errImportRefused) {
		return res, nil
	}
	if err != nil {
		return res, err
	}
	res.Created = created
	sortImportErrors(res.Errors)
	return res, nil
}

// importCredentials is what a row's certificate and public key parse to.
type importCredentials struct {
	cert *DeviceCertificate
	key  *DeviceKey
}

// parseImportCredentials checks a row's certificate and public key as the
// per-device routes do; a bad one is the row's error, named by its field.
func parseImportCredentials(r ImportRow) (importCredentials, error) {
	var c importCredentials
	if strings.TrimSpace(r.Certificate) != "" {
		dc, err := ParseDeviceCertificate(DeviceCertificateInput{Certificate: r.Certificate})
		if err != nil {
			return c, err
		}
		c.cert = &dc
	}
	if strings.TrimSpace(r.PublicKey) != "" {
		alg, _, fp, err := ParsePublicKey(r.PublicKey)
		if err != nil {
			return c, err
		}
		c.key = &DeviceKey{Algorithm: alg, PublicKey: r.PublicKey, Fingerprint: fp}
	}
	return c, nil
}

// insertImportCredentials pins the imported devices' certificates and
// registers their keys, in the import's transaction.
func (s *Store) insertImportCredentials(ctx context.Context, tx *sql.Tx, tenant string, ds []ImportedDevice) error {
	var certs, keys [][]any
	for _, d := range ds {
		if c := d.Certificate; c != nil {
			certs = append(certs, []any{c.ID, tenant, c.Device, c.Fingerprint, c.Subject, c.NotAfter, c.CreatedAt})
		}
		if k := d.Key; k != nil {
			keys = append(keys, []any{k.ID, tenant, k.Device, k.Algorithm, k.PublicKey, k.Fingerprint, k.CreatedAt})
		}
	}
	if err := s.insertRows(ctx, tx, `device_certificates (id, tenant, device, fingerprint, subject, not_after, created_at)`, certs); err != nil {
		return err
	}
	return s.insertRows(ctx, tx, `device_keys (`+deviceKeyColumns+`)`, keys)
}

// insertRows inserts rows of equal width into table (its name and
// columns), in batches on Postgres and one prepared statement on SQLite,
// as insertDevices does.
func (s *Store) insertRows(ctx context.Context, tx *sql.Tx, table string, rows [][]any) error {
	if len(rows) == 0 {
		return nil
	}
	width := len(rows[0])
	placeholders := func(from int) string {
		var b strings.Builder
		b.WriteByte('(')
		for i := range width {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "$%d", from+i+1)
		}
		b.WriteByte(')')
		return b.String()
	}
	if s.dialect != migrations.Postgres {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO `+table+` VALUES `+placeholders(0))
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, r := range rows {
			if _, err := stmt.ExecContext(ctx, r...); err != nil {
				return err
			}
		}
		return nil
	}
	const batch = 500
	for start := 0; start < len(rows); start += batch {
		part := rows[start:min(start+batch, len(rows))]
		var q strings.Builder
		q.WriteString(`INSERT INTO ` + table + ` VALUES `)
		args := make([]any, 0, len(part)*width)
		for i, r := range part {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString(placeholders(len(args)))
			args = append(args, r...)
		}
		if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
			return err
		}
	}
	return nil
}

// errImportRefused rolls back an ImportAll import with rows in error.
var errImportRefused = errors.New("import refused")

func sortImportErrors(es []ImportError) {
	// Rows come in file order; the existing-name and quota errors found
	// later are merged back in row order.
	sort.SliceStable(es, func(i, j int) bool { return es[i].Row < es[j].Row })
}

func deviceNames(ctx context.Context, tx *sql.Tx, tenant string) (map[string]bool, error) {
	rows, err := tx.QueryContext(ctx, `SELECT name FROM devices WHERE tenant = $1`, tenant)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	names := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		names[n] = true
	}
	return names, rows.Err()
}

// insertDevices inserts devices: on Postgres in batches of a few hundred
// rows (one statement per device would make 10,000 round trips); on
// SQLite, in process, with one prepared statement, as parsing a statement
// of hundreds of rows costs more there than executing one row at a time.
func (s *Store) insertDevices(ctx context.Context, tx *sql.Tx, ds []ImportedDevice) error {
	if s.dialect != migrations.Postgres {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO devices (`+deviceColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9)`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, d := range ds {
			dv := d.Device
			if _, err := stmt.ExecContext(ctx, dv.Tenant, dv.Name, dv.Enabled, dv.ClientIDs, marshalJSON(dv.Metadata), dv.SecretHash, dv.CreatedAt, dv.UpdatedAt, marshalJSON(dv.Groups)); err != nil {
				if isUniqueViolation(err) {
					return fmt.Errorf("a device was created during the import: %w", ErrConflict)
				}
				return err
			}
		}
		return nil
	}
	const batch = 500
	for start := 0; start < len(ds); start += batch {
		part := ds[start:min(start+batch, len(ds))]
		var q strings.Builder
		q.WriteString(`INSERT INTO devices (` + deviceColumns + `) VALUES `)
		args := make([]any, 0, len(part)*9)
		for i, d := range part {
			if i > 0 {
				q.WriteString(", ")
			}
			n := len(args)
			fmt.Fprintf(&q, "($%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d, NULL, $%d)", n+1, n+2, n+3, n+4, n+5, n+6, n+7, n+8, n+9)
			dv := d.Device
			args = append(args, dv.Tenant, dv.Name, dv.Enabled, dv.ClientIDs, marshalJSON(dv.Metadata), dv.SecretHash, dv.CreatedAt, dv.UpdatedAt, marshalJSON(dv.Groups))
		}
		if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
			if isUniqueViolation(err) {
				return fmt.Errorf("a device was created during the import: %w", ErrConflict)
			}
			return err
		}
	}
	return nil
}
