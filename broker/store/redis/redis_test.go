package redis_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"github.com/roosthub/roost/broker/store/redis"
	"github.com/roosthub/roost/broker/store/storetest"
	"github.com/roosthub/roost/internal/testenv"
)

func TestRedis(t *testing.T) {
	url := os.Getenv("ROOST_TEST_REDIS_URL")
	if url == "" {
		testenv.Require(t, "ROOST_TEST_REDIS_URL is not set; `make services` starts a local Redis and prints it")
	}
	storetest.Run(t, func(t *testing.T) (storetest.Store, func() storetest.Store) {
		b := make([]byte, 6)
		rand.Read(b)
		prefix := "roost-test-" + hex.EncodeToString(b)
		open := func() storetest.Store {
			s, err := redis.New(context.Background(), redis.Config{URL: url, Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		s := open()
		t.Cleanup(func() { s.Close() })
		return s, open
	})
}
