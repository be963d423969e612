// Package hbase is a session store on HBase, through HBase's own REST
// gateway, laid out as the seed design describes: one queue per session,
// row key = queue id + an 8-byte big-endian sequence number, queue id =
// reverse(client id) + "_" + tenant + "/", so that consecutive client ids
// spread over regions pre-split on the first byte of the reversed id.
//
// Tables (families in brackets), created by the operator; see the README:
//
//	<prefix>queues   [m]  queue id + seq        → m:v message, m:d QoS 2 mark (packet id, released)
//	                      queue id + 8 zero bytes → m:r<packet id> receipts of the client's QoS 2 publishes
//	<prefix>meta     [m]  queue id              → m:seq last sequence number given, m:e the session's epoch
//	<prefix>sessions [s]  tenant "/" client id  → s:v session JSON
//	<prefix>retained [r]  tenant "/" topic      → r:v message
//
// Fencing (store.ErrFenced): a claim raises the epoch with the gateway's
// check-and-put, so two claims never get the same epoch. The gateway has
// no check that covers another row, so an owner's write reads the epoch
// first and writes only if it is still the writer's: a claim that lands
// between the two lets that one write through. Redis checks and writes in
// one step; on HBase, fencing narrows the window without closing it.
package hbase

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/roosthub/roost/broker/store"
)

// Config names the gateway.
type Config struct {
	// URL is the REST gateway's base URL, e.g. http://hbase-rest:8080.
	URL string
	// TablePrefix starts every table name; "roost_" if empty.
	TablePrefix string
	// Client is the HTTP client; a client with a 30s timeout if nil.
	Client *http.Client
}

// Store is a session store on HBase.
type Store struct {
	base   string
	prefix string
	http   *http.Client

	// Each queue's number allocation and write happen under that queue's
	// lock, so its rows appear in order. Queues lock independently; a
	// fan-out locks its queues in a fixed order. The numbers are this
	// process's: two processes appending to one queue need the numbers
	// from HBase itself (see docs/operations.md).
	mu    sync.Mutex
	locks map[string]*queueLock
}

type queueLock struct {
	sync.Mutex
	loaded bool
	last   uint64
}

// New checks that the gateway answers and the tables exist.
func New(ctx context.Context, cfg Config) (*Store, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("hbase URL must be http(s)://host:port of the REST gateway")
	}
	s := &Store{base: strings.TrimRight(cfg.URL, "/"), prefix: cfg.TablePrefix, http: cfg.Client, locks: map[string]*queueLock{}}
	if s.prefix == "" {
		s.prefix = "roost_"
	}
	if s.http == nil {
		s.http = &http.Client{Timeout: 30 * time.Second}
	}
	for _, t := range []string{"queues", "meta", "sessions", "retained"} {
		resp, err := s.do(ctx, http.MethodGet, "/"+s.prefix+t+"/schema", nil, "")
		if err != nil {
			return nil, fmt.Errorf("hbase table %s%s: %w", s.prefix, t, err)
		}
		resp.Body.Close()
	}
	return s, nil
}

// errNotFound is a 404 from the gateway.
var errNotFound = errors.New("not found")

func (s *Store) do(ctx context.Context, method, path string, body any, accept string) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusNotFound {
		resp.Body.Close()
		return nil, errNotFound
	}
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusNotModified { // 304: a check-and-put's check failed
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("hbase %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(msg))
	}
	return resp, nil
}

type cell struct {
	Column string `json:"column"`
	Value  string `json:"$"`
}

type row struct {
	Key  string `json:"key"`
	Cell []cell `json:"Cell"`
}

type cellSet struct {
	Row []row `json:"Row"`
}

func enc(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func newRow(key []byte, column string, value []byte) row {
	return row{Key: enc(key), Cell: []cell{{Column: enc([]byte(column)), Value: enc(value)}}}
}

// put writes rows to a table in one request.
func (s *Store) put(ctx context.Context, table string, rows []row) error {
	if len(rows) == 0 {
		return nil
	}
	resp, err := s.do(ctx, http.MethodPut, "/"+s.prefix+table+"/batch", cellSet{Row: rows}, "")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

func (s *Store) deleteRow(ctx context.Context, table string, key []byte) error {
	resp, err := s.do(ctx, http.MethodDelete, "/"+s.prefix+table+"/"+pathKey(key), nil, "")
	if errors.Is(err, errNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// pathKey escapes every byte of a binary row key for the URL path.
func pathKey(key []byte) string {
	var b strings.Builder
	for _, c := range key {
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// scanned is a row a scanner returned: its key and its cells by column.
type scanned struct {
	key   []byte
	cells map[string][]byte
}

// seq is the sequence number at the end of a queue row's key.
func (r scanned) seq() uint64 { return binary.BigEndian.Uint64(r.key[len(r.key)-8:]) }

// scan returns the rows with start <= key < end.
func (s *Store) scan(ctx context.Context, table string, start, end []byte, limit int) ([]scanned, error) {
	spec := map[string]any{"startRow": enc(start), "endRow": enc(end), "batch": min(max(limit, 1), 1000)}
	resp, err := s.do(ctx, http.MethodPost, "/"+s.prefix+table+"/scanner", spec, "")
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	u, err := url.Parse(loc)
	if err != nil || loc == "" {
		return nil, fmt.Errorf("hbase scanner: no location")
	}
	path := u.EscapedPath()
	defer func() {
		if r, err := s.do(context.Background(), http.MethodDelete, path, nil, ""); err == nil {
			r.Body.Close()
		}
	}()
	var out []scanned
	for len(out) < limit {
		resp, err := s.do(ctx, http.MethodGet, path, nil, "")
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusNoContent {
			resp.Body.Close()
			break
		}
		var cs cellSet
		err = json.NewDecoder(resp.Body).Decode(&cs)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("hbase scanner: %w", err)
		}
		if len(cs.Row) == 0 {
			break
		}
		for _, r := range cs.Row {
			row, err := decodeRow(r)
			if err != nil {
				return nil, fmt.Errorf("hbase scanner: %w", err)
			}
			out = append(out, row)
		}
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

func decodeRow(r row) (scanned, error) {
	k, err := base64.StdEncoding.DecodeString(r.Key)
	if err != nil || len(r.Cell) == 0 {
		return scanned{}, errors.New("bad row")
	}
	out := scanned{key: k, cells: make(map[string][]byte, len(r.Cell))}
	for _, c := range r.Cell {
		col, err1 := base64.StdEncoding.DecodeString(c.Column)
		v, err2 := base64.StdEncoding.DecodeString(c.Value)
		if err1 != nil || err2 != nil {
			return scanned{}, errors.New("bad cell")
		}
		out.cells[string(col)] = v
	}
	return out, nil
}

// getRow reads one row; a missing row is not an error.
func (s *Store) getRow(ctx context.Context, table string, key []byte) (scanned, bool, error) {
	resp, err := s.do(ctx, http.MethodGet, "/"+s.prefix+table+"/"+pathKey(key), nil, "")
	if errors.Is(err, errNotFound) {
		return scanned{}, false, nil
	}
	if err != nil {
		return scanned{}, false, err
	}
	var cs cellSet
	err = json.NewDecoder(resp.Body).Decode(&cs)
	resp.Body.Close()
	if err != nil || len(cs.Row) == 0 {
		return scanned{}, false, fmt.Errorf("hbase %s row: damaged", table)
	}
	r, err := decodeRow(cs.Row[0])
	return r, err == nil, err
}

// queueID is reverse(client id) + "_" + tenant + "/". The slash cannot occur
// in a tenant slug, so no queue id is a prefix of another's rows.
func queueID(tenant, clientID string) []byte {
	r := []byte(clientID)
	slices.Reverse(r)
	return append(append(append(r, '_'), tenant...), '/')
}

func queueRow(qid []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(nil), qid...), seq)
}

func tenantKey(tenant, name string) []byte { return []byte(tenant + "/" + name) }

// afterPrefix is the smallest key above every key starting with p.
func afterPrefix(p []byte) []byte {
	return append(append([]byte(nil), p...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
}

func (s *Store) SaveSession(ctx context.Context, tenant string, sess store.Session) error {
	v, err := json.Marshal(sess)
	if err != nil {
		return err
	}
	if err := s.fence(ctx, tenant, sess.ClientID, sess.Epoch); err != nil {
		return err
	}
	return s.put(ctx, "sessions", []row{newRow(tenantKey(tenant, sess.ClientID), "s:v", v)})
}

func (s *Store) Sessions(ctx context.Context, tenant string) ([]store.Session, error) {
	p := []byte(tenant + "/")
	rows, err := s.scan(ctx, "sessions", p, afterPrefix(p), 1<<30)
	if err != nil {
		return nil, err
	}
	out := make([]store.Session, 0, len(rows))
	for _, r := range rows {
		sess, err := s.decodeSession(ctx, tenant, r)
		if err != nil {
			return nil, err
		}
		out = append(out, sess)
	}
	return out, nil
}

// Session gets the session's row, then its receipts row and its epoch:
// the tenant's sessions are not scanned.
func (s *Store) Session(ctx context.Context, tenant, clientID string) (store.Session, bool, error) {
	r, found, err := s.getRow(ctx, "sessions", tenantKey(tenant, clientID))
	if err != nil || !found {
		return store.Session{}, false, err
	}
	sess, err := s.decodeSession(ctx, tenant, r)
	if err != nil {
		return store.Session{}, false, err
	}
	return sess, true, nil
}

// decodeSession decodes a row of the sessions table and fills in the
// session's pending releases, sorted, and its epoch.
func (s *Store) decodeSession(ctx context.Context, tenant string, r scanned) (store.Session, error) {
	var sess store.Session
	if err := json.Unmarshal(r.cells["s:v"], &sess); err != nil {
		return store.Session{}, err
	}
	rr, found, err := s.getRow(ctx, "queues", receiptRow(tenant, sess.ClientID))
	if err != nil {
		return store.Session{}, err
	}
	for col := range rr.cells {
		if id, ok := strings.CutPrefix(col, "m:r"); ok && found {
			n, err := strconv.ParseUint(id, 10, 16)
			if err != nil {
				return store.Session{}, fmt.Errorf("hbase receipt %q: damaged", col)
			}
			sess.PendingRelease = append(sess.PendingRelease, uint16(n))
		}
	}
	slices.Sort(sess.PendingRelease)
	if sess.Epoch, err = s.epoch(ctx, tenant, sess.ClientID); err != nil {
		return store.Session{}, err
	}
	return sess, nil
}

const epochColumn = "m:e"

// epoch reads a session's epoch; 0 if it was never claimed.
func (s *Store) epoch(ctx context.Context, tenant, clientID string) (uint64, error) {
	r, found, err := s.getRow(ctx, "meta", queueID(tenant, clientID))
	if err != nil || !found {
		return 0, err
	}
	v, ok := r.cells[epochColumn]
	if !ok {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, errors.New("hbase epoch: damaged")
	}
	return binary.BigEndian.Uint64(v), nil
}

// fence refuses a write under a stale epoch (see the package comment).
func (s *Store) fence(ctx context.Context, tenant, clientID string, epoch uint64) error {
	current, err := s.epoch(ctx, tenant, clientID)
	if err != nil {
		return err
	}
	if current != epoch {
		return store.ErrFenced
	}
	return nil
}

// errChanged is a check-and-put whose check failed.
var errChanged = errors.New("hbase: cell changed")

// Claim raises the epoch by check-and-put, again if another claim came
// first.
func (s *Store) Claim(ctx context.Context, tenant, clientID string) (uint64, error) {
	qid := queueID(tenant, clientID)
	for range 20 {
		current, err := s.epoch(ctx, tenant, clientID)
		if err != nil {
			return 0, err
		}
		var expected []byte // empty: the cell must be absent
		if current > 0 {
			expected = binary.BigEndian.AppendUint64(nil, current)
		}
		next := current + 1
		err = s.checkAndPut(ctx, "meta", qid, epochColumn, binary.BigEndian.AppendUint64(nil, next), expected)
		if err == nil {
			return next, nil
		}
		if !errors.Is(err, errChanged) {
			return 0, err
		}
	}
	return 0, errors.New("hbase: claim a session: too many concurrent claims")
}

// checkAndPut writes a cell if the check cell (here the same column)
// holds the expected value; an empty one expects no cell. The gateway
// answers 304 when the check fails.
func (s *Store) checkAndPut(ctx context.Context, table string, key []byte, column string, value, expected []byte) error {
	r := row{Key: enc(key), Cell: []cell{
		{Column: enc([]byte(column)), Value: enc(value)},
		{Column: enc([]byte(column)), Value: enc(expected)},
	}}
	resp, err := s.do(ctx, http.MethodPut, "/"+s.prefix+table+"/"+pathKey(key)+"?check=put", cellSet{Row: []row{r}}, "")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified {
		return errChanged
	}
	return nil
}

// receiptRow holds a client's receipts: the queue id with sequence number
// 0, which no message has.
func receiptRow(tenant, clientID string) []byte { return queueRow(queueID(tenant, clientID), 0) }

func receiptColumn(packetID uint16) string { return "m:r" + strconv.Itoa(int(packetID)) }

func (s *Store) Release(ctx context.Context, tenant, clientID string, epoch uint64, packetID uint16) error {
	if err := s.fence(ctx, tenant, clientID, epoch); err != nil {
		return err
	}
	path := "/" + s.prefix + "queues/" + pathKey(receiptRow(tenant, clientID)) + "/" + pathKey([]byte(receiptColumn(packetID)))
	resp, err := s.do(ctx, http.MethodDelete, path, nil, "")
	if errors.Is(err, errNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Mark writes the mark into the message's row. A mark that outlives its
// message (an ack in between) is a row without m:v: reads skip it, and
// the session's deletion takes it.
func (s *Store) Mark(ctx context.Context, tenant, clientID string, epoch, seq uint64, packetID uint16, released bool) error {
	v := binary.BigEndian.AppendUint16(nil, packetID)
	if released {
		v = append(v, 1)
	} else {
		v = append(v, 0)
	}
	if err := s.fence(ctx, tenant, clientID, epoch); err != nil {
		return err
	}
	return s.put(ctx, "queues", []row{newRow(queueRow(queueID(tenant, clientID), seq), "m:d", v)})
}

func (s *Store) DeleteSession(ctx context.Context, tenant, clientID string, epoch uint64) error {
	if err := s.fence(ctx, tenant, clientID, epoch); err != nil {
		return err
	}
	if err := s.deleteRow(ctx, "sessions", tenantKey(tenant, clientID)); err != nil {
		return err
	}
	q := s.lock(tenant, clientID)
	defer q.Unlock()
	return s.deleteRows(ctx, queueID(tenant, clientID), 0, ^uint64(0))
}

func (s *Store) lock(tenant, clientID string) *queueLock {
	k := string(queueID(tenant, clientID))
	s.mu.Lock()
	q := s.locks[k]
	if q == nil {
		q = &queueLock{}
		s.locks[k] = q
	}
	s.mu.Unlock()
	q.Lock()
	return q
}

// Append writes the items, and the receipt, in one multi-row PUT (then each
// queue's last number in one more), holding the locks of the queues
// involved. The gateway applies a multi-row PUT as one batch; HBase makes
// each row atomic, not the batch, so only a failure inside HBase between
// rows could store part of it.
func (s *Store) Append(ctx context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error) {
	var cids []string
	for _, it := range items {
		cids = append(cids, it.ClientID)
	}
	slices.Sort(cids)
	cids = slices.Compact(cids)
	locks := map[string]*queueLock{}
	for _, cid := range cids {
		locks[cid] = s.lock(tenant, cid)
	}
	defer func() {
		for _, q := range locks {
			q.Unlock()
		}
	}()
	next := map[string]uint64{}
	for _, cid := range cids {
		q := locks[cid]
		if !q.loaded {
			last, err := s.loadLast(ctx, queueID(tenant, cid))
			if err != nil {
				return nil, err
			}
			q.last, q.loaded = last, true
		}
		next[cid] = q.last
	}
	seqs := make([]uint64, len(items))
	rows := make([]row, 0, len(items))
	for i, it := range items {
		next[it.ClientID]++
		seqs[i] = next[it.ClientID]
		v, err := it.Message.MarshalBinary()
		if err != nil {
			return nil, err
		}
		rows = append(rows, newRow(queueRow(queueID(tenant, it.ClientID), seqs[i]), "m:v", v))
	}
	if r.ClientID != "" {
		rows = append(rows, newRow(receiptRow(tenant, r.ClientID), receiptColumn(r.PacketID), []byte{1}))
	}
	if err := s.put(ctx, "queues", rows); err != nil {
		return nil, err
	}
	meta := make([]row, 0, len(cids))
	for _, cid := range cids {
		meta = append(meta, newRow(queueID(tenant, cid), "m:seq", binary.BigEndian.AppendUint64(nil, next[cid])))
	}
	if err := s.put(ctx, "meta", meta); err != nil {
		return nil, err
	}
	for _, cid := range cids {
		locks[cid].last = next[cid]
	}
	return seqs, nil
}

// loadLast finds a queue's last number: the larger of the recorded one and
// the last row present (the record is written after the rows, so after a
// crash between the two the rows are ahead).
func (s *Store) loadLast(ctx context.Context, qid []byte) (uint64, error) {
	var last uint64
	meta, found, err := s.getRow(ctx, "meta", qid)
	if err != nil {
		return 0, err
	}
	if v, ok := meta.cells["m:seq"]; found && ok {
		// The row holds the epoch (m:e) too: the number is read by name.
		if len(v) != 8 {
			return 0, fmt.Errorf("hbase meta row: damaged")
		}
		last = binary.BigEndian.Uint64(v)
	}
	rows, err := s.scan(ctx, "queues", queueRow(qid, last+1), afterPrefix(qid), 1<<30)
	if err != nil {
		return 0, err
	}
	if n := len(rows); n > 0 {
		last = max(last, rows[n-1].seq())
	}
	return last, nil
}

func (s *Store) Read(ctx context.Context, tenant, clientID string, after uint64, limit int) ([]store.Queued, error) {
	qid := queueID(tenant, clientID)
	rows, err := s.scan(ctx, "queues", queueRow(qid, after+1), afterPrefix(qid), limit)
	if err != nil {
		return nil, err
	}
	out := make([]store.Queued, 0, len(rows))
	for _, r := range rows {
		v, ok := r.cells["m:v"]
		if !ok {
			continue // a mark that outlived its message
		}
		q := store.Queued{Seq: r.seq()}
		if err := q.Message.UnmarshalBinary(v); err != nil {
			return nil, err
		}
		if d := r.cells["m:d"]; len(d) == 3 {
			q.PacketID, q.Released = binary.BigEndian.Uint16(d), d[2] == 1
		}
		out = append(out, q)
	}
	return out, nil
}

// Ack deletes the named messages' rows, marks with them. The gateway has
// no multi-row delete: one request per row.
func (s *Store) Ack(ctx context.Context, tenant, clientID string, epoch uint64, seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	if err := s.fence(ctx, tenant, clientID, epoch); err != nil {
		return err
	}
	qid := queueID(tenant, clientID)
	for _, seq := range seqs {
		if err := s.deleteRow(ctx, "queues", queueRow(qid, seq)); err != nil {
			return err
		}
	}
	return nil
}

// deleteRows deletes the queue's rows from one number up to another (with
// the queue's lock held); from 0 takes the receipts too.
func (s *Store) deleteRows(ctx context.Context, qid []byte, from, upTo uint64) error {
	end := afterPrefix(qid)
	if upTo < ^uint64(0) {
		end = queueRow(qid, upTo+1)
	}
	rows, err := s.scan(ctx, "queues", queueRow(qid, from), end, 1<<30)
	if err != nil {
		return err
	}
	for _, r := range rows {
		if err := s.deleteRow(ctx, "queues", r.key); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) QueueInfo(ctx context.Context, tenant, clientID string) (store.QueueInfo, error) {
	qid := queueID(tenant, clientID)
	rows, err := s.scan(ctx, "queues", queueRow(qid, 1), afterPrefix(qid), 1<<30)
	if err != nil {
		return store.QueueInfo{}, err
	}
	var info store.QueueInfo
	for _, r := range rows {
		v, ok := r.cells["m:v"]
		if !ok {
			continue
		}
		if info.Len == 0 {
			info.MinSeq = r.seq()
			var m store.Message
			if err := m.UnmarshalBinary(v); err != nil {
				return info, err
			}
			info.Oldest = m.Created
		}
		info.Len++
	}
	q := s.lock(tenant, clientID)
	defer q.Unlock()
	if !q.loaded {
		if q.last, err = s.loadLast(ctx, qid); err != nil {
			return info, err
		}
		q.loaded = true
	}
	info.MaxSeq = q.last
	return info, nil
}

func (s *Store) SetRetained(ctx context.Context, tenant string, m store.Message) error {
	k := tenantKey(tenant, m.Topic)
	if len(m.Payload) == 0 {
		return s.deleteRow(ctx, "retained", k)
	}
	v, err := m.MarshalBinary()
	if err != nil {
		return err
	}
	return s.put(ctx, "retained", []row{newRow(k, "r:v", v)})
}

func (s *Store) Retained(ctx context.Context, tenant string) ([]store.Message, error) {
	p := []byte(tenant + "/")
	rows, err := s.scan(ctx, "retained", p, afterPrefix(p), 1<<30)
	if err != nil {
		return nil, err
	}
	out := make([]store.Message, 0, len(rows))
	for _, r := range rows {
		var m store.Message
		if err := m.UnmarshalBinary(r.cells["r:v"]); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Close releases idle connections.
func (s *Store) Close() error {
	s.http.CloseIdleConnections()
	return nil
}
