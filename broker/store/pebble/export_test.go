package pebble

// WALSyncs is how many fsyncs the sync loop (or a log's Close) has made
// of a store with a sync interval.
func (s *Store) WALSyncs() int64 { return s.wal.syncs.Load() }

// WALSynced hears of each fsync the sync loop makes (one waiting at most).
func (s *Store) WALSynced() <-chan struct{} { return s.wal.synced }
