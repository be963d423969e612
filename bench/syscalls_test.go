package bench

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteSyscallsOfThisProcess(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "w"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before, err := WriteSyscalls(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := f.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	after, err := WriteSyscalls(os.Getpid())
	if err != nil || after-before < 10 {
		t.Errorf("write syscalls %d then %d (%v): want at least 10 more after 10 writes", before, after, err)
	}
}
