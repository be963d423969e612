package pebble

import (
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/vfs"
)

// walFS is the file system of a store that syncs on an interval. Pebble
// still commits every synced write with pebble.Sync, so its log writer
// hands the write-ahead log's partial block to write(2) before the commit
// returns; but the fsync it then asks of a log file is skipped, and a loop
// fsyncs the log files written since its last round every interval. A
// write acknowledged is then in the page cache: it survives the death of
// the process (kill -9, a panic), and a crash of the machine loses at most
// the last interval (and one fsync's time).
//
// pebble.NoSync would not do: Pebble's log writer keeps a NoSync write in
// its own 32 KiB block, in the process's memory, until the block fills or
// some commit asks for a sync, so a kill -9 would lose acknowledged
// writes.
type walFS struct {
	vfs.FS
	log *slog.Logger

	mu    sync.Mutex
	files map[*walFile]struct{}

	// failed is the first fsync error: a log whose fsync failed may have
	// lost what it held, so every later sync Pebble asks for fails with it,
	// as it would had Pebble made the failed fsync itself. Pebble takes a
	// failed commit for fatal: the process stops at the next synced write.
	failed atomic.Pointer[error]
	// syncs counts the fsyncs made, and synced hears of each, for tests.
	syncs  atomic.Int64
	synced chan struct{}
}

func newWALFS(fs vfs.FS, log *slog.Logger) *walFS {
	return &walFS{FS: fs, log: log, files: map[*walFile]struct{}{}, synced: make(chan struct{}, 1)}
}

// isWAL reports whether a file Pebble names is a write-ahead log
// (NNNNNN.log); the other files (tables, MANIFEST, OPTIONS) keep their
// own fsyncs, which are not on a commit's path.
func isWAL(name string) bool { return filepath.Ext(name) == ".log" }

func (fs *walFS) Create(name string) (vfs.File, error) {
	f, err := fs.FS.Create(name)
	return fs.wrap(name, f, err)
}

func (fs *walFS) ReuseForWrite(oldname, newname string) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname)
	return fs.wrap(newname, f, err)
}

func (fs *walFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !isWAL(name) {
		return f, err
	}
	w := &walFile{File: f, fs: fs}
	fs.mu.Lock()
	fs.files[w] = struct{}{}
	fs.mu.Unlock()
	return w, nil
}

// run fsyncs the logs written since the last round every interval (the
// gap between the end of one round and the start of the next, so that a
// slow disk is not asked for fsyncs back to back), until stop is closed.
func (fs *walFS) run(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		fs.syncAll()
		t.Reset(interval)
	}
}

func (fs *walFS) syncAll() {
	fs.mu.Lock()
	files := make([]*walFile, 0, len(fs.files))
	for f := range fs.files {
		files = append(files, f)
	}
	fs.mu.Unlock()
	for _, f := range files {
		f.sync()
	}
}

// fail records a failed fsync.
func (fs *walFS) fail(err error) {
	if fs.failed.CompareAndSwap(nil, &err) {
		fs.log.Error("session store: fsync of the write-ahead log failed; the next synced write stops the process", "err", err)
	}
}

func (fs *walFS) err() error {
	if p := fs.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// walFile is a write-ahead log file whose fsyncs the loop makes.
type walFile struct {
	vfs.File
	fs    *walFS
	dirty atomic.Bool // written since the last fsync

	// mu orders an fsync with Close, so that none is made on a closed file.
	mu     sync.Mutex
	closed bool
}

func (f *walFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	// After the write: an fsync that clears the flag covers what was
	// written before it was cleared.
	f.dirty.Store(true)
	return n, err
}

// Sync, SyncData and SyncTo are what Pebble asks at a synced commit,
// once the write is made: they skip the fsync, which the loop makes.
func (f *walFile) Sync() error     { return f.fs.err() }
func (f *walFile) SyncData() error { return f.fs.err() }
func (f *walFile) SyncTo(int64) (fullSync bool, err error) {
	return false, f.fs.err()
}

// sync fsyncs the file if it was written since the last fsync.
func (f *walFile) sync() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || !f.dirty.Swap(false) {
		return
	}
	f.fsync()
}

// fsync makes the fsync, with f.mu held.
func (f *walFile) fsync() {
	if err := f.File.SyncData(); err != nil {
		f.fs.fail(err)
		return
	}
	f.fs.syncs.Add(1)
	select {
	case f.fs.synced <- struct{}{}:
	default:
	}
}

// Close fsyncs what is left (Pebble closes a log when it moves to the
// next, and at its own Close) and closes the file.
func (f *walFile) Close() error {
	f.fs.mu.Lock()
	delete(f.fs.files, f)
	f.fs.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	if f.dirty.Swap(false) {
		f.fsync()
	}
	if err := f.fs.err(); err != nil {
		f.File.Close()
		return err
	}
	return f.File.Close()
}
