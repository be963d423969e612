package memory_test

import (
	"testing"

	"github.com/roosthub/roost/broker/store/memory"
	"github.com/roosthub/roost/broker/store/storetest"
)

func TestMemory(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (storetest.Store, func() storetest.Store) {
		return memory.New(), nil
	})
}
