package redisretry

import (
	"errors"
	"fmt"
	"io"
	"testing"

	goredis "github.com/redis/go-redis/v9"
)

func TestUnrun(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{io.EOF, false},
		{io.ErrUnexpectedEOF, false},
		{errors.New("i/o timeout"), false},
		{errors.New("ERR Error running script"), false},
		{goredis.ErrPoolTimeout, true},
		{fmt.Errorf("append: %w", goredis.ErrPoolTimeout), true},
		{errors.New("LOADING Redis is loading the dataset in memory"), true},
		{errors.New("READONLY You can't write against a read only replica."), true},
		{errors.New("MASTERDOWN Link with MASTER is down"), true},
		{errors.New("NOREPLICAS Not enough good replicas to write."), true},
		{errors.New("ERR max number of clients reached"), true},
	} {
		if got := Unrun(tc.err); got != tc.want {
			t.Errorf("Unrun(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
