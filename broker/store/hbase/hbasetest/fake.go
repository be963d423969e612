// Package hbasetest is a fake of HBase's REST gateway (Stargate), enough of
// it for the session store: single and multi-row PUT, row GET, row and
// column DELETE, and scanners. No live HBase can run where Roost's tests run, so the hbase
// back-end is tested against this; it follows the gateway's documented JSON
// shapes (base64 keys, columns and values) and status codes.
package hbasetest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// Cell and Row are the gateway's JSON shapes.
type Cell struct {
	Column string `json:"column"`
	Value  string `json:"$"`
}

type Row struct {
	Key  string `json:"key"`
	Cell []Cell `json:"Cell"`
}

type CellSet struct {
	Row []Row `json:"Row"`
}

// Fake is a running fake gateway.
type Fake struct {
	*httptest.Server

	mu       sync.Mutex
	tables   map[string]map[string]map[string][]byte // table → row → column → value
	scanners map[string]*scanner
	next     int
	// Requests counts requests by method and kind, for tests that check
	// batching.
	Requests map[string]int
}

type scanner struct {
	table      string
	start, end string
	batch      int
	pos        string
	done       bool
}

// New starts a fake gateway with the given tables.
func New(tables ...string) *Fake {
	f := &Fake{tables: map[string]map[string]map[string][]byte{}, scanners: map[string]*scanner{}, Requests: map[string]int{}}
	for _, t := range tables {
		f.tables[t] = map[string]map[string][]byte{}
	}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	return f
}

func (f *Fake) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	parts := strings.SplitN(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/", 3)
	if len(parts) == 2 && parts[0] == "version" {
		w.Write([]byte(`{"Version":"fake"}`))
		return
	}
	table := parts[0]
	rows, ok := f.tables[table]
	if !ok {
		http.Error(w, "table not found", http.StatusNotFound)
		return
	}
	if len(parts) < 2 {
		http.Error(w, "no row", http.StatusBadRequest)
		return
	}
	if parts[1] == "schema" {
		w.Write([]byte(`{"name":"` + table + `"}`))
		return
	}
	if parts[1] == "scanner" {
		f.Requests[r.Method+" scanner"]++
		f.serveScanner(w, r, table, rows, parts)
		return
	}
	row, err := url.PathUnescape(parts[1])
	if err != nil {
		http.Error(w, "bad row", http.StatusBadRequest)
		return
	}
	f.Requests[r.Method+" row"]++
	switch r.Method {
	case http.MethodPut, http.MethodPost:
		var cs CellSet
		if err := json.NewDecoder(r.Body).Decode(&cs); err != nil {
			http.Error(w, "bad cell set", http.StatusBadRequest)
			return
		}
		if r.URL.Query().Get("check") == "put" {
			f.checkAndPut(w, rows, row, cs)
			return
		}
		for _, rw := range cs.Row {
			key, err1 := base64.StdEncoding.DecodeString(rw.Key)
			if err1 != nil {
				http.Error(w, "bad key", http.StatusBadRequest)
				return
			}
			cols := rows[string(key)]
			if cols == nil {
				cols = map[string][]byte{}
				rows[string(key)] = cols
			}
			for _, c := range rw.Cell {
				col, err1 := base64.StdEncoding.DecodeString(c.Column)
				val, err2 := base64.StdEncoding.DecodeString(c.Value)
				if err1 != nil || err2 != nil || !bytes.Contains(col, []byte(":")) {
					http.Error(w, "bad cell", http.StatusBadRequest)
					return
				}
				cols[string(col)] = val
			}
		}
		w.WriteHeader(http.StatusOK)
	case http.MethodGet:
		cols, ok := rows[row]
		if !ok {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(CellSet{Row: []Row{encodeRow(row, cols)}})
	case http.MethodDelete:
		cols, ok := rows[row]
		if !ok {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		if len(parts) == 3 { // one column: /table/row/family:qualifier
			col, err := url.PathUnescape(parts[2])
			if err != nil || !strings.Contains(col, ":") {
				http.Error(w, "bad column", http.StatusBadRequest)
				return
			}
			delete(cols, col)
			if len(cols) == 0 {
				delete(rows, row)
			}
		} else {
			delete(rows, row)
		}
		w.WriteHeader(http.StatusOK)
	default:
		http.Error(w, "method", http.StatusMethodNotAllowed)
	}
}

// checkAndPut is the gateway's conditional put (PUT /table/row?check=put):
// one row whose last cell is the check, the cells before it the put. An
// empty expected value matches a missing cell, as in HBase. A failed check
// answers 304 Not Modified.
func (f *Fake) checkAndPut(w http.ResponseWriter, rows map[string]map[string][]byte, row string, cs CellSet) {
	if len(cs.Row) != 1 || len(cs.Row[0].Cell) < 2 {
		http.Error(w, "check-and-put takes one row with a put and a check cell", http.StatusBadRequest)
		return
	}
	cells := cs.Row[0].Cell
	decoded := make([][2][]byte, len(cells))
	for i, c := range cells {
		col, err1 := base64.StdEncoding.DecodeString(c.Column)
		val, err2 := base64.StdEncoding.DecodeString(c.Value)
		if err1 != nil || err2 != nil || !bytes.Contains(col, []byte(":")) {
			http.Error(w, "bad cell", http.StatusBadRequest)
			return
		}
		decoded[i] = [2][]byte{col, val}
	}
	check := decoded[len(decoded)-1]
	if !bytes.Equal(check[0], decoded[0][0]) {
		http.Error(w, "the check cell's column differs from the put's", http.StatusBadRequest)
		return
	}
	current, present := rows[row][string(check[0])]
	if !bytes.Equal(current, check[1]) || len(check[1]) > 0 && !present {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	cols := rows[row]
	if cols == nil {
		cols = map[string][]byte{}
		rows[row] = cols
	}
	for _, c := range decoded[:len(decoded)-1] {
		cols[string(c[0])] = c[1]
	}
	w.WriteHeader(http.StatusOK)
}

func encodeRow(key string, cols map[string][]byte) Row {
	r := Row{Key: base64.StdEncoding.EncodeToString([]byte(key))}
	names := make([]string, 0, len(cols))
	for c := range cols {
		names = append(names, c)
	}
	sort.Strings(names)
	for _, c := range names {
		r.Cell = append(r.Cell, Cell{Column: base64.StdEncoding.EncodeToString([]byte(c)), Value: base64.StdEncoding.EncodeToString(cols[c])})
	}
	return r
}

func (f *Fake) serveScanner(w http.ResponseWriter, r *http.Request, table string, rows map[string]map[string][]byte, parts []string) {
	if len(parts) == 2 && (r.Method == http.MethodPost || r.Method == http.MethodPut) {
		var spec struct {
			StartRow string `json:"startRow"`
			EndRow   string `json:"endRow"`
			Batch    int    `json:"batch"`
		}
		if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
			http.Error(w, "bad scanner", http.StatusBadRequest)
			return
		}
		start, _ := base64.StdEncoding.DecodeString(spec.StartRow)
		end, _ := base64.StdEncoding.DecodeString(spec.EndRow)
		f.next++
		id := fmt.Sprintf("s%d", f.next)
		f.scanners[id] = &scanner{table: table, start: string(start), end: string(end), batch: max(spec.Batch, 1)}
		w.Header().Set("Location", fmt.Sprintf("%s/%s/scanner/%s", f.URL, table, id))
		w.WriteHeader(http.StatusCreated)
		return
	}
	if len(parts) != 3 {
		http.Error(w, "bad scanner path", http.StatusBadRequest)
		return
	}
	sc, ok := f.scanners[parts[2]]
	if !ok {
		http.Error(w, "no such scanner", http.StatusNotFound)
		return
	}
	switch r.Method {
	case http.MethodDelete:
		delete(f.scanners, parts[2])
		w.WriteHeader(http.StatusOK)
	case http.MethodGet:
		keys := make([]string, 0, len(rows))
		for k := range rows {
			if k >= sc.start && (sc.end == "" || k < sc.end) && (sc.pos == "" || k > sc.pos) {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		if len(keys) == 0 || sc.done {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if len(keys) > sc.batch {
			keys = keys[:sc.batch]
		}
		var cs CellSet
		for _, k := range keys {
			cs.Row = append(cs.Row, encodeRow(k, rows[k]))
		}
		sc.pos = keys[len(keys)-1]
		json.NewEncoder(w).Encode(cs)
	default:
		http.Error(w, "method", http.StatusMethodNotAllowed)
	}
}
