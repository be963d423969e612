package pebble_test

import (
	"testing"

	"github.com/roosthub/roost/broker/store/pebble"
	"github.com/roosthub/roost/broker/store/storetest"
)

func TestPebble(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (storetest.Store, func() storetest.Store) {
		dir := t.TempDir()
		open := func() storetest.Store {
			s, err := pebble.New(pebble.Config{Dir: dir})
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
