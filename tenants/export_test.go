package tenants

import "fmt"

func fmtSscanf(hash string, m, t, p *int) (int, error) {
	var v int
	return fmt.Sscanf(hash, "$argon2id$v=%d$m=%d,t=%d,p=%d$", &v, m, t, p)
}
