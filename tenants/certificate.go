package tenants

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// A device may prove who it is with a TLS client certificate instead of a
// secret: one that chains to a certificate authority its tenant registered
// and names the device (its subject common name is the device's name, or
// it carries the URI SAN roost://<tenant>/<device>), or one pinned to the
// device itself by certificate or SHA-256 fingerprint.
//
// A CA belongs to the one tenant that registered it (CreateCA refuses one
// another tenant registered): a CN names a device, not its tenant, so two
// tenants trusting one CA could each pass the other's certificates as
// their own. A CA registered by several tenants before that rule is
// Shared, and a certificate under it must carry the URI SAN.

// MaxCAs and MaxDeviceCertificates bound what a tenant and a device hold.
const (
	MaxCAs                = 20
	MaxDeviceCertificates = 10
)

// CA is a certificate authority a tenant trusts for its devices.
type CA struct {
	ID          string    `json:"id"`
	Subject     string    `json:"subject"`
	Fingerprint string    `json:"fingerprint"` // hex SHA-256 of the DER certificate
	Certificate string    `json:"certificate"` // PEM
	NotAfter    time.Time `json:"not_after"`
	CreatedAt   time.Time `json:"created_at"`
	// Shared says another tenant registered the same certificate too
	// (before a CA was bound to one tenant): a certificate under it
	// admits a device only by the URI SAN naming its tenant.
	Shared bool `json:"-"`
	// Provisioning, when set, marks the CA for just-in-time provisioning:
	// a device unknown to the tenant that presents a certificate under
	// this CA naming it is registered on its first connection, from this
	// template. Nil (the default) refuses unknown devices.
	Provisioning *ProvisioningTemplate `json:"provisioning"`
}

// CAInput registers a CA certificate, marked for provisioning or not.
type CAInput struct {
	Certificate  string                `json:"certificate"`
	Provisioning *ProvisioningTemplate `json:"provisioning,omitempty"`
}

// CAUpdate marks a CA for provisioning with a template, or (null)
// unmarks it.
type CAUpdate struct {
	Provisioning *ProvisioningTemplate `json:"provisioning"`
}

// ProvisioningTemplate is what a device provisioned from a CA is
// registered with.
type ProvisioningTemplate struct {
	Groups    []string          `json:"groups"`
	Metadata  map[string]string `json:"metadata"`
	ClientIDs ClientIDPolicy    `json:"client_ids"`
}

// Validate checks the template and fills in defaults (no groups, no
// metadata, exact client ids).
func (p *ProvisioningTemplate) Validate() error {
	in := DeviceInput{Name: "template", ClientIDs: p.ClientIDs, Metadata: p.Metadata, Groups: p.Groups}
	if err := in.Validate(); err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			fe.Field = "provisioning." + fe.Field
		}
		return err
	}
	p.Groups, p.Metadata, p.ClientIDs = in.Groups, in.Metadata, in.ClientIDs
	return nil
}

// DeviceCertificate is a certificate pinned to a device: by the certificate
// itself (subject and expiry known) or by its fingerprint alone.
type DeviceCertificate struct {
	ID          string     `json:"id"`
	Device      string     `json:"device"`
	Fingerprint string     `json:"fingerprint"`
	Subject     string     `json:"subject"`
	NotAfter    *time.Time `json:"not_after"`
	CreatedAt   time.Time  `json:"created_at"`
}

// DeviceCertificateInput pins a certificate (PEM) or a fingerprint (hex
// SHA-256 of the DER certificate, colons allowed) to a device: one of the
// two.
type DeviceCertificateInput struct {
	Certificate string `json:"certificate,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
}

// Fingerprint is the hex SHA-256 of a DER certificate.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// ParseCertificatePEM reads exactly one PEM CERTIFICATE block.
func ParseCertificatePEM(field, text string) (*x509.Certificate, error) {
	block, rest := pem.Decode([]byte(strings.TrimSpace(text)))
	if block == nil || block.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) > 0 {
		return nil, invalid(field, "must be one PEM block of type CERTIFICATE")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, invalid(field, "is not a certificate: %v", err)
	}
	return cert, nil
}

// ParseCA checks a CA certificate: a CA (basic constraints) allowed to sign
// certificates, not expired.
func ParseCA(in CAInput, now time.Time) (CA, error) {
	cert, err := ParseCertificatePEM("certificate", in.Certificate)
	if err != nil {
		return CA{}, err
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return CA{}, invalid("certificate", "is not a CA certificate (basic constraints)")
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return CA{}, invalid("certificate", "may not sign certificates (key usage)")
	}
	if now.After(cert.NotAfter) {
		return CA{}, invalid("certificate", "expired on %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if in.Provisioning != nil {
		if err := in.Provisioning.Validate(); err != nil {
			return CA{}, err
		}
	}
	return CA{Subject: cert.Subject.String(), Fingerprint: Fingerprint(cert.Raw), Certificate: in.Certificate, NotAfter: cert.NotAfter.UTC(),
		Provisioning: in.Provisioning}, nil
}

var fingerprintRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ParseDeviceCertificate checks what pins a certificate to a device.
func ParseDeviceCertificate(in DeviceCertificateInput) (DeviceCertificate, error) {
	switch {
	case in.Certificate != "" && in.Fingerprint != "":
		return DeviceCertificate{}, invalid("fingerprint", "give the certificate or its fingerprint, not both")
	case in.Certificate != "":
		cert, err := ParseCertificatePEM("certificate", in.Certificate)
		if err != nil {
			return DeviceCertificate{}, err
		}
		na := cert.NotAfter.UTC()
		return DeviceCertificate{Fingerprint: Fingerprint(cert.Raw), Subject: cert.Subject.String(), NotAfter: &na}, nil
	case in.Fingerprint != "":
		fp := strings.ToLower(strings.ReplaceAll(in.Fingerprint, ":", ""))
		if !fingerprintRE.MatchString(fp) {
			return DeviceCertificate{}, invalid("fingerprint", "must be the 64 hex digits of a SHA-256")
		}
		return DeviceCertificate{Fingerprint: fp}, nil
	}
	return DeviceCertificate{}, invalid("certificate", "give the certificate or its fingerprint")
}

// DeviceURI is the URI SAN that names a device in a client certificate, as
// an alternative to its subject common name.
func DeviceURI(tenant, device string) string { return "roost://" + tenant + "/" + device }

// CertificateCredential is what a verified client certificate leaves: the
// fingerprint of the leaf, and of the tenant CA it chains to ("" for a
// certificate pinned to the device).
type CertificateCredential struct {
	Leaf, CA string
}

// ErrBadCertificate is the error of a client certificate that does not
// admit the device.
var ErrBadCertificate = errors.New("client certificate not valid for the device")

// VerifyDeviceCertificate decides whether a client certificate chain (leaf
// first, as presented) admits a device: a leaf pinned to the device and
// within its validity, or one that chains to one of the tenant's CAs at
// now, is meant for client authentication, and names the device.
func VerifyDeviceCertificate(chain []*x509.Certificate, tenant, device string, cas []CA, pinned []DeviceCertificate, now time.Time) (CertificateCredential, error) {
	if len(chain) == 0 {
		return CertificateCredential{}, fmt.Errorf("%w: none presented", ErrBadCertificate)
	}
	leaf := chain[0]
	fp := Fingerprint(leaf.Raw)
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return CertificateCredential{}, fmt.Errorf("%w: outside its validity (%s to %s)", ErrBadCertificate,
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	for _, p := range pinned {
		if p.Fingerprint == fp {
			return CertificateCredential{Leaf: fp}, nil
		}
	}
	if len(cas) == 0 {
		return CertificateCredential{}, fmt.Errorf("%w: not pinned to the device and the tenant trusts no CA", ErrBadCertificate)
	}
	roots := x509.NewCertPool()
	for _, ca := range cas {
		if c, err := ParseCertificatePEM("certificate", ca.Certificate); err == nil {
			roots.AddCert(c)
		}
	}
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return CertificateCredential{}, fmt.Errorf("%w: %v", ErrBadCertificate, err)
	}
	byURI, byCN := namesDeviceByURI(leaf, tenant, device), leaf.Subject.CommonName == device
	if !byURI && !byCN {
		return CertificateCredential{}, fmt.Errorf("%w: it names %q, not the device", ErrBadCertificate, leaf.Subject.CommonName)
	}
	shared := map[string]bool{}
	for _, ca := range cas {
		shared[ca.Fingerprint] = ca.Shared
	}
	for _, chain := range chains {
		root := Fingerprint(chain[len(chain)-1].Raw)
		if byURI || !shared[root] {
			return CertificateCredential{Leaf: fp, CA: root}, nil
		}
	}
	return CertificateCredential{}, fmt.Errorf("%w: it names the device by CN alone, and its CA is registered by another tenant too: "+
		"it must carry the URI SAN %s", ErrBadCertificate, DeviceURI(tenant, device))
}

func namesDeviceByURI(leaf *x509.Certificate, tenant, device string) bool {
	for _, u := range leaf.URIs {
		if u.String() == DeviceURI(tenant, device) {
			return true
		}
	}
	return false
}
