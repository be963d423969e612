package broker

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/broker/store/memory"
)

// TestDeadLetterPageBytes: a page of dead letters carries at most
// DeadLetterPageBytes of payloads (a larger message alone), says it was
// cut short, and the pages after it, each from the last one's seq, hold
// every dead letter once, in order. Another tenant's dead letters under
// the same destination id are never on them.
func TestDeadLetterPageBytes(t *testing.T) {
	st := memory.New()
	h := &Hub{cfg: Config{Sessions: st, Delivery: &Delivery{}}}
	ctx := context.Background()
	big := DeadLetterPageBytes/3 + 1 // three do not fit
	var items []store.Item
	for i := range 40 {
		size := 10
		switch {
		case i < 7:
			size = big
		case i == 7:
			size = DeadLetterPageBytes + 5 // larger than a page: alone
		}
		items = append(items, store.Item{ClientID: deadID("dst_1"), Message: store.Message{Topic: "t", Payload: bytes.Repeat([]byte{byte(i)}, size), QoS: 1}})
	}
	if _, err := st.Append(ctx, "acme", items, store.Receipt{}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Append(ctx, "other", []store.Item{{ClientID: deadID("dst_1"), Message: store.Message{Topic: "t", Payload: []byte("theirs")}}}, store.Receipt{}); err != nil {
		t.Fatal(err)
	}
	var (
		after uint64
		got   []int // each message's first byte, in the order the pages gave them
		sizes []int // each page's length
	)
	for range 20 {
		page, more, err := h.DeadLetters(ctx, "acme", "dst_1", after, 30)
		if err != nil {
			t.Fatal(err)
		}
		total := 0
		for _, l := range page {
			total += len(l.Payload)
			got = append(got, int(l.Payload[0]))
			if string(l.Payload) == "theirs" {
				t.Fatal("another tenant's dead letter on acme's page")
			}
		}
		if len(page) > 1 && total > DeadLetterPageBytes {
			t.Errorf("a page of %d dead letters carries %d bytes, over %d", len(page), total, DeadLetterPageBytes)
		}
		if len(page) == 0 {
			break
		}
		sizes = append(sizes, len(page))
		if !more && len(page) < 30 {
			break
		}
		after = page[len(page)-1].Seq
	}
	// 2, 2, 2, the seventh alone (with the larger one it is over), the
	// larger one alone, then the 32 small ones in pages of 30.
	if want := []int{2, 2, 2, 1, 1, 30, 2}; !slices.Equal(sizes, want) {
		t.Errorf("pages of %v, want %v", sizes, want)
	}
	if len(got) != 40 {
		t.Fatalf("%d dead letters over the pages, want 40", len(got))
	}
	for i, b := range got {
		if b != i {
			t.Fatalf("dead letter %d is the %dth appended: pages skip or repeat", i, b)
		}
	}
}
