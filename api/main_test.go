package api_test

import (
	"os"
	"testing"

	"github.com/roosthub/roost/tenants"
)

// TestMain hashes passwords at Argon2id's least cost
// (tenants.UseCheapPasswordHashes): these tests sign up and log in
// thousands of times, each a third of a second at the real cost under the
// race detector.
func TestMain(m *testing.M) {
	tenants.UseCheapPasswordHashes()
	os.Exit(m.Run())
}
