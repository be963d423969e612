package pebble

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// TestLog: Pebble's messages, its errors and its background errors reach
// the store's logger at their level; Fatalf logs and panics.
func TestLog(t *testing.T) {
	var buf bytes.Buffer
	opts := options(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	l := opts.Logger.(interface {
		Infof(string, ...any)
		Errorf(string, ...any)
		Fatalf(string, ...any)
	})
	l.Infof("cleanup falling behind; job queue has over %d jobs\n", 100)
	l.Errorf("write %s: %s", "000012.log", "no space left on device")
	opts.EventListener.BackgroundError(errors.New("compaction: checksum mismatch"))
	func() {
		defer func() {
			if v := recover(); v != "invariant broken: L0 overlaps" {
				t.Errorf("Fatalf: recovered %v, want its message", v)
			}
		}()
		l.Fatalf("invariant broken: %s", "L0 overlaps")
		t.Error("Fatalf returned")
	}()
	for _, want := range []string{
		`level=INFO msg="cleanup falling behind; job queue has over 100 jobs"` + "\n",
		`level=ERROR msg="write 000012.log: no space left on device"`,
		`level=ERROR msg="session store background error" err="compaction: checksum mismatch"`,
		`level=ERROR msg="invariant broken: L0 overlaps"`,
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("the log has no %s; it is:\n%s", want, buf.String())
		}
	}
}

// TestNilLog: a store without a logger opens and logs nowhere.
func TestNilLog(t *testing.T) {
	s, err := New(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	options(nil).EventListener.BackgroundError(errors.New("dropped"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
